"""Presets, the three networks, the one-cycle schedule and the in-step batches."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import dataset_utils
import learning_env_setting
import main
import model as model_module
import train_validation_test


def test_defaults_are_the_standard_preset():
    assert main.parse_config([]) == learning_env_setting.Config()
    standard = learning_env_setting.PRESETS["standard"]
    defaults = dataclasses.asdict(learning_env_setting.Config())
    assert {name: defaults[name] for name in standard} == standard


def test_a_given_flag_overrides_its_preset_and_only_that():
    config = main.parse_config(["--preset", "seed", "--epochs", "3", "--augment"])
    assert (config.model, config.optimizer, config.schedule) == ("seed", "sgd", "constant")
    assert (config.batch_size, config.learning_rate, config.validation_fraction) == (32, 0.01, 0.2)
    assert config.epochs == 3 and config.augment is True
    fast = main.parse_config(["--preset", "fast", "--batch-size", "64"])
    assert fast.model == "convnet-fast" and fast.batch_size == 64 and fast.augment is False


def test_unknown_preset_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.parse_config(["--preset", "fastest"])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", list(model_module.MODELS))
def test_every_network_gives_ten_logits(name):
    network = model_module.build_model(name)
    images = np.random.default_rng(0).random((3, 28, 28, 1)).astype("float32")
    logits = network(images, training=False)
    assert tuple(logits.shape) == (3, 10)
    np.testing.assert_allclose(network(images, training=False), logits)


def test_seed_network_is_the_original_architecture():
    network = model_module.build_model("seed")
    # conv 5x5x1x8 (+8), conv 5x5x8x32 (+32), dense 512x64 (+64), dense 64x10 (+10)
    expected = (25 * 8 + 8) + (25 * 8 * 32 + 32) + (4 * 4 * 32 * 64 + 64) + (64 * 10 + 10)
    assert network.count_params() == expected


def test_one_cycle_rises_then_falls_to_almost_zero():
    schedule = train_validation_test.OneCycle(peak=0.01, total_steps=1000)
    rates = np.array([float(schedule(step)) for step in range(0, 1001, 10)])
    assert rates[0] == pytest.approx(0.001)
    assert rates.max() == pytest.approx(0.01)
    peak_at = int(np.argmax(rates)) * 10
    assert peak_at == 200  # 20 % warm-up
    assert np.all(np.diff(rates[: peak_at // 10 + 1]) > 0)
    assert np.all(np.diff(rates[peak_at // 10:]) < 0)
    assert rates[-1] == pytest.approx(1e-5)
    assert float(schedule(5000)) == pytest.approx(1e-5)  # kept after the end


def test_optimizer_follows_the_config():
    def optimizer(preset, precision="float32"):
        config = learning_env_setting.make_config(preset, precision=precision)
        return train_validation_test.make_optimizer(config, 10)

    sgd = optimizer("seed")
    assert sgd.__class__.__name__ == "SGD" and float(sgd.learning_rate) == pytest.approx(0.01)
    adam = optimizer("standard")
    assert adam.__class__.__name__ == "Adam"
    assert isinstance(adam._learning_rate, train_validation_test.OneCycle)
    # Mixed precision wraps the same optimizer in loss scaling; the schedule is unchanged.
    scaled = optimizer("standard", "mixed")
    assert scaled.__class__.__name__ == "LossScaleOptimizer"
    assert scaled.inner_optimizer.__class__.__name__ == "Adam"
    assert isinstance(scaled.inner_optimizer._learning_rate, train_validation_test.OneCycle)


@pytest.mark.parametrize("epoch", [2, 3])  # augmented, clean
def test_batches_made_in_the_step_match_the_tf_data_pipeline(tiny_mnist_dir, epoch):
    config = learning_env_setting.make_config(data_dir=tiny_mnist_dir, batch_size=64,
                                              epochs=3, clean_epochs=1)
    data = dataset_utils.load_processing_mnist(config, announce=lambda *_: None)
    make_batch = tf.function(data.make_batch)
    pipeline = list(data.train_dataset(epoch, skip=1))
    in_step = [make_batch(*batch) for batch in data.train_batches(epoch, skip=1)]
    assert len(in_step) == len(pipeline) == data.steps_per_epoch - 1
    for (images_a, labels_a), (images_b, labels_b) in zip(pipeline, in_step):
        np.testing.assert_array_equal(labels_a, labels_b)
        np.testing.assert_allclose(images_a, images_b, atol=1e-6)


def test_clean_epochs_train_on_the_images_as_they_are(tiny_mnist_dir):
    config = learning_env_setting.make_config(data_dir=tiny_mnist_dir, batch_size=64,
                                              epochs=4, clean_epochs=2)
    data = dataset_utils.load_processing_mnist(config, announce=lambda *_: None)
    assert [data.augments(epoch) for epoch in (1, 2, 3, 4, 5)] == [True, True, False, False, False]
    make_batch = tf.function(data.make_batch)
    for epoch in (2, 3):
        indices, seed, augment = next(data.train_batches(epoch))
        images, labels = make_batch(indices, seed, augment)
        plain = data.train_images[indices.numpy()] / 255.0
        np.testing.assert_array_equal(labels, data.train_labels[indices.numpy()])
        # Epoch 2 is augmented (its images differ from the plain ones), epoch 3 is clean.
        assert bool(augment) is (epoch == 2)
        assert np.allclose(images, plain, atol=1e-6) is (epoch == 3)
    # Without augmentation no epoch augments, whatever --clean-epochs says.
    plain_run = dataclasses.replace(config, augment=False)
    data = dataset_utils.load_processing_mnist(plain_run, announce=lambda *_: None)
    assert not any(data.augments(epoch) for epoch in (1, 2, 3, 4))


def test_clean_epochs_flag_and_presets(capsys):
    assert main.parse_config([]).clean_epochs == learning_env_setting.PRESETS["standard"]["clean_epochs"] > 0
    assert main.parse_config(["--preset", "fast"]).clean_epochs == 0
    assert main.parse_config(["--clean-epochs", "0"]).clean_epochs == 0
    describe = learning_env_setting.describe_augmentation
    assert describe(main.parse_config(["--epochs", "5", "--clean-epochs", "2"])) == \
        "on (off in the last 2 epochs)"
    assert describe(main.parse_config(["--epochs", "2", "--clean-epochs", "2"])).startswith("off")
    assert describe(main.parse_config(["--clean-epochs", "0"])) == "on"
    assert describe(main.parse_config(["--preset", "fast"])) == "off"
    with pytest.raises(SystemExit) as exit_info:
        main.parse_config(["--clean-epochs", "-1"])
    assert exit_info.value.code == 2
    assert "--clean-epochs" in capsys.readouterr().err


def test_run_directory_of_an_older_version_is_refused_with_its_reason(tmp_path):
    saved = {"model": "bn-convnet-v3", "batch_size": 128}
    directory = learning_env_setting.RunDirectory(str(tmp_path), 10, saved, -1)
    with pytest.raises(learning_env_setting.UserError, match="another version of this program"):
        learning_env_setting.check_compatible(directory, {"model": "convnet-v4", "batch_size": 128})
    # Same version, other network: the ordinary list of differences.
    saved["model"] = "seed-v4"
    with pytest.raises(learning_env_setting.UserError, match="model: 'seed-v4' -> 'convnet-v4'"):
        learning_env_setting.check_compatible(directory, {"model": "convnet-v4", "batch_size": 128})


def test_weight_average_warms_up_then_keeps_its_decay():
    network = model_module.build_model("convnet-fast")
    average = train_validation_test.WeightAverage(network, decay=0.2)
    # The trainable weights are averaged; batch-norm statistics and the dropout generator's
    # state are not.
    assert [v.path for v in average.targets] == [v.path for v in network.trainable_variables]
    assert not any("moving" in v.path for v in average.targets)
    kernel, shadow = average.targets[0], average.shadows[0]
    expected = kernel.numpy().copy()
    for n, value in enumerate([1.0, -2.0, 0.5], start=1):
        kernel.assign(np.full(kernel.shape, value, dtype="float32"))
        average.update()
        d = min(0.2, (1 + n) / (10 + n))  # 2/11 = 0.18, then the decay 0.2 caps it
        expected = d * expected + (1 - d) * value
        np.testing.assert_allclose(shadow.numpy(), expected, rtol=1e-6)
    assert int(average.count.numpy()) == 3


def test_weight_average_is_applied_for_evaluation_and_raw_weights_come_back_exactly():
    network = model_module.build_model("convnet-fast")
    average = train_validation_test.WeightAverage(network, decay=0.9)
    for variable in average.shadows:
        variable.assign(variable + 1.0)
    raw = [variable.numpy().copy() for variable in average.targets]
    with pytest.raises(RuntimeError):
        with average.applied():
            for variable, shadow in zip(average.targets, average.shadows):
                np.testing.assert_array_equal(variable.numpy(), shadow.numpy())
            raise RuntimeError("evaluation failed")
    for variable, value in zip(average.targets, raw):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_weight_average_flag_and_presets(capsys):
    assert main.parse_config([]).weight_average == 0.999
    assert main.parse_config(["--preset", "seed"]).weight_average == 0.0
    assert main.parse_config(["--weight-average", "0"]).weight_average == 0.0
    with pytest.raises(SystemExit) as exit_info:
        main.parse_config(["--weight-average", "1"])
    assert exit_info.value.code == 2
    assert "weight-average" in capsys.readouterr().err
