"""Presets, the three networks, the one-cycle schedule and the in-step batches."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import dataset_utils
import main
import model as model_module
import run_record
import settings
import speed
import train_state
from basic_utils import UserError


def test_defaults_are_the_standard_preset():
    config = main.parse_config([])
    assert config == settings.make_config("standard")
    standard = settings.PRESETS["standard"]
    assert {name: getattr(config, name) for name in standard} == standard
    assert (config.seed, config.dataset, config.precision, config.deterministic) == (
        0, "mnist", "auto", True)


def test_a_given_flag_overrides_its_preset_and_only_that():
    config = main.parse_config(["--preset", "seed", "--epochs", "3", "--augment"])
    assert (config.model, config.optimizer, config.schedule) == ("seed", "sgd", "constant")
    assert (config.batch_size, config.learning_rate, config.validation_fraction) == (32, 0.01, 0.2)
    assert config.epochs == 3 and config.augment is True
    fast = main.parse_config(["--preset", "fast", "--batch-size", "64"])
    assert fast.model == "convnet-fast" and fast.batch_size == 64 and fast.augment is False


def test_every_config_is_checked_where_it_is_made():
    config = settings.make_config("fast")
    with pytest.raises(UserError, match="--epochs must be a positive integer, got 0"):
        dataclasses.replace(config, epochs=0)
    with pytest.raises(UserError, match="--batch-size must be a positive integer, got '64'"):
        settings.make_config(batch_size="64")
    with pytest.raises(UserError, match="unknown --optimizer 'rmsprop'; choose one of adam, sgd"):
        settings.make_config(optimizer="rmsprop")


@pytest.mark.parametrize("name", list(settings.MODELS))
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
    schedule = train_state.OneCycle(peak=0.01, total_steps=1000)
    rates = np.array([float(schedule(step)) for step in range(0, 1001, 10)])
    assert rates[0] == pytest.approx(0.001)
    assert rates.max() == pytest.approx(0.01)
    peak_at = int(np.argmax(rates)) * 10
    assert peak_at == 200  # 20 % warm-up
    assert np.all(np.diff(rates[: peak_at // 10 + 1]) > 0)
    assert np.all(np.diff(rates[peak_at // 10:]) < 0)
    # At the end the cosine is cos(pi) = -1; float32 rounds cos near pi by a few units of
    # 2^-24, which moves the floor by about 10^-9, 10^-4 of it.
    assert rates[-1] == pytest.approx(1e-5, rel=1e-4)
    assert float(schedule(5000)) == pytest.approx(1e-5, rel=1e-4)  # kept after the end


def test_optimizer_follows_the_config():
    def optimizer(preset, precision="float32"):
        config = settings.make_config(preset, precision=precision)
        return train_state.make_optimizer(config, 10)

    sgd = optimizer("seed")
    assert sgd.__class__.__name__ == "SGD" and float(sgd.learning_rate) == pytest.approx(0.01)
    adam = optimizer("standard")
    assert adam.__class__.__name__ == "Adam" and adam.name == "adam"
    one_cycle = {"peak": 3e-3, "total_steps": 200, "warmup_fraction": 0.2,
                 "start_fraction": 0.1, "end_fraction": 1e-3}
    assert adam.get_config()["learning_rate"]["config"] == one_cycle
    # Mixed precision wraps the same optimizer in loss scaling; the schedule is unchanged.
    scaled = optimizer("standard", "mixed")
    assert scaled.__class__.__name__ == "LossScaleOptimizer"
    assert scaled.inner_optimizer.__class__.__name__ == "Adam"
    assert scaled.inner_optimizer.get_config()["learning_rate"]["config"] == one_cycle


@pytest.mark.parametrize("epoch", [2, 3])  # augmented, clean
def test_batches_made_in_the_step_match_the_benchmarks_tf_data_pipeline(tiny_mnist_dir, epoch):
    config = settings.make_config(data_dir=tiny_mnist_dir, batch_size=64, epochs=3,
                                  clean_epochs=1)
    data = dataset_utils.load_processing_mnist(config, announce=lambda *_: None)
    make_batch = tf.function(data.make_batch)
    pipeline = list(speed.train_dataset(data, epoch, skip=1))
    in_step = [make_batch(*batch) for batch in data.train_batches(epoch, skip=1)]
    assert len(in_step) == len(pipeline) == data.steps_per_epoch - 1
    for (images_a, labels_a), (images_b, labels_b) in zip(pipeline, in_step):
        np.testing.assert_array_equal(labels_a, labels_b)
        np.testing.assert_allclose(images_a, images_b, atol=1e-6)


def test_clean_epochs_train_on_the_images_as_they_are(tiny_mnist_dir):
    config = settings.make_config(data_dir=tiny_mnist_dir, batch_size=64, epochs=4,
                                  clean_epochs=2)
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


def test_clean_epochs_flag_and_presets():
    assert main.parse_config([]).clean_epochs == settings.PRESETS["standard"]["clean_epochs"] > 0
    assert main.parse_config(["--preset", "fast"]).clean_epochs == 0
    assert main.parse_config(["--clean-epochs", "0"]).clean_epochs == 0
    describe = settings.describe_augmentation
    assert describe(main.parse_config(["--epochs", "5", "--clean-epochs", "2"])) == \
        "on (off in the last 2 epochs)"
    assert describe(main.parse_config(["--epochs", "2", "--clean-epochs", "2"])).startswith("off")
    assert describe(main.parse_config(["--clean-epochs", "0"])) == "on"
    assert describe(main.parse_config(["--preset", "fast"])) == "off"
    with pytest.raises(UserError, match="--clean-epochs must be an integer of at least 0"):
        main.parse_config(["--clean-epochs", "-1"])


def test_a_run_of_another_format_is_refused_with_its_reason(tiny_mnist_dir):
    config = settings.make_config(data_dir=tiny_mnist_dir)
    data = dataset_utils.load_processing_mnist(config, announce=lambda *_: None)
    current = run_record.make_record(config, data.info, {"tensorflow": "2.21.0"})
    # What an earlier version of this program saved: no format version.
    earlier = {key: value for key, value in current.items() if key != "format_version"}
    with pytest.raises(UserError, match=r"another version of this program \(format "
                                        r"unrecorded; this version reads format 1\)"):
        run_record.check_compatible("/runs/old", earlier, current)
    # Same format, other network: the ordinary list of differences.
    other = dict(current, model="seed")
    with pytest.raises(UserError, match="model: 'seed' -> 'convnet'"):
        run_record.check_compatible("/runs/old", other, current)
    run_record.check_compatible("/runs/old", dict(current), current)


def test_weight_average_warms_up_then_keeps_its_decay():
    network = model_module.build_model("convnet-fast")
    average = train_state.WeightAverage(network, decay=0.2)
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
        # float32 rounds each of the update's operations by at most 2^-24 of its operands
        # (up to 2 here); over three updates 16 such roundings is ample.
        np.testing.assert_allclose(shadow.numpy(), expected, rtol=0, atol=16 * 2.0 ** -24 * 2)
    assert int(average.count.numpy()) == 3


def test_weight_average_is_applied_for_evaluation_and_raw_weights_come_back_exactly():
    network = model_module.build_model("convnet-fast")
    average = train_state.WeightAverage(network, decay=0.9)
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


def test_weight_average_flag_and_presets():
    assert main.parse_config([]).weight_average == 0.999
    assert main.parse_config(["--preset", "seed"]).weight_average == 0.0
    assert main.parse_config(["--weight-average", "0"]).weight_average == 0.0
    with pytest.raises(UserError, match="--weight-average must be a number from 0"):
        main.parse_config(["--weight-average", "1"])
