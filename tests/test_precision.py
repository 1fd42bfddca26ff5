"""Mixed precision, XLA and the GPU data path: the same training, computed another way.

No GPU is needed: TensorFlow's CPU kernels run float16 and XLA too (slowly), so these
tests check what the options compute and how runs record and resume them; their speed
belongs to benchmarks/gpu_check.sh.
"""

import contextlib
import itertools
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import cp_utils
import dataset_utils
import learning_env_setting
import main
import model as model_module
import train_validation_test
import training_loop
from test_end_to_end import read_metrics, run_main, tree_digest

# A recipe whose second epoch continues the first exactly even when the run is extended
# from 1 to 2 epochs: constant learning rate, no augmentation (so no clean-epoch switch).
STEADY = ["--model", "convnet-fast", "--epochs", 1, "--batch-size", 32, "--schedule", "constant",
          "--no-augment", "--clean-epochs", 0]


@contextlib.contextmanager
def op_determinism_off():
    """Turn TensorFlow's op determinism off for a block (XLA refuses to compile with it on;
    earlier tests in this process turned it on, and the public API cannot turn it off)."""
    from tensorflow.python.framework import config as tf_config

    if not hasattr(tf_config, "disable_op_determinism"):
        pytest.skip("this TensorFlow has no disable_op_determinism")
    was_on = tf_config.is_op_determinism_enabled()
    tf_config.disable_op_determinism()
    try:
        yield
    finally:
        if was_on:
            tf_config.enable_op_determinism()


def test_precision_resolution():
    resolve = learning_env_setting.resolve_precision
    assert resolve("auto", None, gpu_available=False) == "float32"
    assert resolve("auto", None, gpu_available=True) == "mixed"
    # A resumed run keeps what it was trained in, whatever the machine now has...
    assert resolve("auto", {"precision": "mixed"}, gpu_available=False) == "mixed"
    assert resolve("auto", {"precision": "float32"}, gpu_available=True) == "float32"
    # ... and a config.json from before the setting existed means float32.
    assert resolve("auto", {"batch_size": 128}, gpu_available=True) == "float32"
    assert learning_env_setting.config_differences({"batch_size": 1}, {"precision": "float32"}) == []
    # An explicit choice always wins (and a resumed run then refuses a change).
    assert resolve("float32", {"precision": "mixed"}, gpu_available=True) == "float32"
    assert main.parse_config([]).precision == "auto"
    with pytest.raises(ValueError, match="resolved"):
        train_validation_test.make_optimizer(learning_env_setting.make_config(), 10)


def test_xla_without_no_determinism_is_one_line_exit_2(tmp_path, capsys):
    code, out, err = run_main(capsys, "--xla", "--run-dir", tmp_path / "run")
    assert code == 2 and out == ""
    assert "--no-determinism" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", list(model_module.MODELS))
def test_mixed_network_computes_in_float16_and_matches_float32(name):
    exact = model_module.build_model(name, precision="float32")
    mixed = model_module.build_model(name, precision="mixed")
    # Same weights (all float32 in both), so the same checkpoint fits either network.
    assert [v.dtype for v in mixed.variables] == [v.dtype for v in exact.variables]
    mixed.set_weights(exact.get_weights())
    layers = getattr(mixed, "feature_layers", None) or mixed.body
    assert {layer.compute_dtype for layer in layers} == {"float16"}
    images = np.random.default_rng(0).random((8, 28, 28, 1)).astype("float32")
    for training in (False, True):
        logits = mixed(images, training=training)
        assert logits.dtype == tf.float32  # the softmax and loss never see float16
        # Dropout draws differ between the two networks' generators: compare without it.
        if not training or name != "convnet":
            np.testing.assert_allclose(logits, exact(images, training=training),
                                       atol=0.05, rtol=0.02)


def test_mixed_precision_trains_with_loss_scaling_and_resumes_exactly(tiny_mnist_dir, tmp_path,
                                                                     capsys):
    """A mixed run learns, records its precision, keeps it when resumed without
    --precision (auto would pick float32 on a CPU), refuses a change, and resumes exactly:
    1 + 1 epochs give the metrics and arrays of 2 uninterrupted ones."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    mixed = ["--data-dir", tiny_mnist_dir, "--precision", "mixed", *STEADY]
    code, out, err = run_main(capsys, *mixed, "--run-dir", whole, "--epochs", 2)
    assert code == 0, out + err
    assert "mixed precision (float16 arithmetic, float32 weights, loss scaling)" in out
    assert read_metrics(whole)[-1]["train_accuracy"] > 0.5  # ten classes: chance is 0.1
    config = json.loads((whole / "config.json").read_text())
    assert config["precision"] == "mixed" and config["xla"] is False
    assert config["model"] == "convnet-fast-v7-mixed"
    assert config["versions"]["device"] == training_loop.describe_device()

    code, out, err = run_main(capsys, *mixed, "--run-dir", split)
    assert code == 0, out + err
    resumed = [argument for argument in mixed if argument not in ("--precision", "mixed")]
    code, out, err = run_main(capsys, *resumed, "--run-dir", split, "--epochs", 2)
    assert code == 0, out + err
    assert "Resuming after epoch 1" in out and "mixed precision" in out
    columns = ("train_loss", "train_accuracy", "val_loss", "test_loss", "test_accuracy")
    assert ([[row[c] for c in columns] for row in read_metrics(split)]
            == [[row[c] for c in columns] for row in read_metrics(whole)])
    with np.load(whole / "epoch_0002" / "checkpoint") as a, \
            np.load(split / "epoch_0002" / "checkpoint") as b:
        arrays = [key for key in a.files if "/" in key]
        assert arrays == [key for key in b.files if "/" in key]
        for key in arrays:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)

    before = tree_digest(split)
    code, out, err = run_main(capsys, *resumed, "--run-dir", split, "--epochs", 3,
                              "--precision", "float32")
    assert code == 2 and "precision: 'mixed' -> 'float32'" in err
    assert tree_digest(split) == before


def mixed_steps(scale):
    """Steps of the fast network in mixed precision whose loss scale starts at `scale`
    (its optimizer unbuilt, as a caller may hand it over)."""
    keras.utils.set_random_seed(0)
    network = model_module.build_model("convnet-fast", precision="mixed")
    config = learning_env_setting.make_config(precision="mixed", schedule="constant")
    optimizer = train_validation_test.make_optimizer(config, 10)
    assert not optimizer.built
    steps = train_validation_test.Steps(network, optimizer, make_batch=None)
    optimizer.dynamic_scale.assign(scale)
    return steps


def test_loss_scale_is_the_optimizers_variable_and_travels_in_checkpoints():
    rng = np.random.default_rng(0)
    images = tf.constant(rng.random((16, 28, 28, 1)), tf.float32)
    labels = tf.constant(rng.integers(0, 10, 16), tf.int64)
    # Whatever the scale, the update is the same (it cancels out), which holds only if the
    # compiled step multiplies by the scale the optimizer divides by.
    updated = []
    for scale in (4.0, 2.0 ** 15):
        steps = mixed_steps(scale)
        tf.function(steps.update)(images, labels)
        updated.append([v.numpy() for v in steps.model.trainable_variables])
        assert int(steps.optimizer.step_counter.numpy()) == 1  # finite: a counted step
    for small, large in zip(*updated):
        np.testing.assert_allclose(small, large, rtol=1e-3, atol=1e-5)
    # The scale and its counter are saved and restored with the optimizer's state.
    steps = mixed_steps(123.0)
    saved = cp_utils.checkpoint_bytes(steps.model, steps.optimizer, 1, [], {})
    fresh = mixed_steps(2.0 ** 15)
    path = tf.io.gfile.join(tf.compat.v1.test.get_temp_dir(), "mixed.checkpoint")
    with open(path, "wb") as handle:
        handle.write(saved)
    cp_utils.restore_checkpoint(path, fresh.model, fresh.optimizer)
    assert float(fresh.optimizer.dynamic_scale.numpy()) == 123.0


@pytest.fixture
def exact_float32_matmuls():
    """TensorFloat-32 off (GPUs since Ampere use it for float32 by default, which would put
    XLA's and cuDNN's results further apart than rounding)."""
    was_on = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    yield
    tf.config.experimental.enable_tensor_float_32_execution(was_on)


def test_xla_steps_compute_what_the_plain_steps_compute(tiny_mnist_dir, exact_float32_matmuls):
    """Four augmented steps and a test pass, compiled by XLA or not, in mixed precision
    (float16 batch norm, dropout and the loss-scale update all compiled): the same numbers
    to within float16 rounding. A small network keeps XLA's compile time short."""
    config = learning_env_setting.make_config(data_dir=tiny_mnist_dir, batch_size=32,
                                              precision="mixed")
    data = dataset_utils.load_processing_mnist(config, announce=lambda *_: None)
    batches = list(itertools.islice(data.train_batches(1), 4))
    with op_determinism_off():
        results = []
        for jit in (False, True):
            keras.utils.set_random_seed(0)
            network = model_module.MnistClassifier(8, ((8,), (8,)), 0.3, 10,
                                                   dtype="mixed_float16")
            network(np.zeros((1, 28, 28, 1), "float32"))
            steps = train_validation_test.Steps(
                network, train_validation_test.make_optimizer(config, data.steps_per_epoch),
                data.make_batch, train_validation_test.make_weight_average(config, network),
                jit_compile=jit)
            train = train_validation_test.go_train(steps, batches)
            with steps.evaluation_weights():
                test = train_validation_test.go_test(steps, data.test_batches())
            results.append((train, test, [v.numpy() for v in network.trainable_variables]))
    (train, test, weights), (xla_train, xla_test, xla_weights) = results
    assert xla_train == pytest.approx(train, rel=1e-3)
    assert xla_test == pytest.approx(test, rel=1e-3)
    for plain, compiled in zip(weights, xla_weights):
        np.testing.assert_allclose(compiled, plain, rtol=1e-2, atol=1e-3)


def test_training_set_kept_as_floats_on_a_gpu_gives_the_same_batches(tiny_mnist_dir,
                                                                    monkeypatch):
    config = learning_env_setting.make_config(data_dir=tiny_mnist_dir, batch_size=32)
    monkeypatch.setattr(dataset_utils, "keep_on_gpu", lambda: False)
    host = dataset_utils.load_processing_mnist(config, announce=lambda *_: None)
    assert host._train_tensors()[0].dtype == tf.uint8
    monkeypatch.setattr(dataset_utils, "keep_on_gpu", lambda: True)
    device = dataset_utils.load_processing_mnist(config, announce=lambda *_: None)
    assert device._train_tensors()[0].dtype == tf.float32
    for batch in itertools.islice(host.train_batches(1), 2):
        for made_on_host, made_on_device in zip(host.make_batch(*batch),
                                                device.make_batch(*batch)):
            np.testing.assert_array_equal(made_on_device, made_on_host)
