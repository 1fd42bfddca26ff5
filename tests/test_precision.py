"""Mixed precision, XLA and the GPU data path: the same training, computed another way.

No GPU is needed: TensorFlow's CPU kernels run float16 and XLA too (slowly), so these
tests check what the options compute and how runs record and resume them; their speed
belongs to benchmarks/gpu_check.sh.
"""

import itertools
import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import cp_utils
import dataset_utils
import helpers
import main
import model as model_module
import settings
import train_state
import train_validation_test
import training_loop
from helpers import read_metrics, run_main, tree_digest

# float16 keeps 11 significant bits: each rounding is off by at most 2^-11 of the value.
FLOAT16_UNIT = 2.0 ** -11
# A recipe whose second epoch continues the first exactly even when the run is extended
# from 1 to 2 epochs: constant learning rate, no augmentation (so no clean-epoch switch).
STEADY = ["--model", "convnet-fast", "--epochs", 1, "--batch-size", 32, "--schedule", "constant",
          "--no-augment", "--clean-epochs", 0]


def test_precision_resolution():
    resolve = settings.resolve_precision
    assert resolve("auto", None, gpu_available=False) == "float32"
    assert resolve("auto", None, gpu_available=True) == "mixed"
    # A resumed run keeps what it was trained in, whatever the machine now has...
    assert resolve("auto", "mixed", gpu_available=False) == "mixed"
    assert resolve("auto", "float32", gpu_available=True) == "float32"
    # ... and an explicit choice always wins (a resumed run then refuses a change).
    assert resolve("float32", "mixed", gpu_available=True) == "float32"
    assert main.parse_config([]).precision == "auto"
    with pytest.raises(ValueError, match="resolved"):
        train_state.make_optimizer(settings.make_config(), 10)


def test_xla_without_no_determinism_is_one_line_exit_2(tmp_path, capsys):
    code, out, err = run_main(capsys, "--xla", "--run-dir", tmp_path / "run")
    assert code == 2 and out == ""
    assert "--no-determinism" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", list(settings.MODELS))
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
            # A few layers of float16 rounding leave the logits within a few units of
            # float16's rounding of the largest one; 16 units allow for that.
            reference = exact(images, training=training).numpy()
            np.testing.assert_allclose(logits, reference, rtol=0,
                                       atol=16 * FLOAT16_UNIT * np.abs(reference).max())


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
    assert config["model"] == "convnet-fast"
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
    helpers.assert_same_run(whole, split)
    assert "optimizer/loss_scale_optimizer/dynamic_scale" in helpers.final_variables(split)

    before = tree_digest(split)
    code, out, err = run_main(capsys, *resumed, "--run-dir", split, "--epochs", 3,
                              "--precision", "float32")
    assert code == 2 and "precision: 'mixed' -> 'float32'" in err
    assert tree_digest(split) == before


def mixed_state(scale):
    """A training state of the fast network in mixed precision, plain SGD, whose loss scale
    starts at `scale`."""
    keras.utils.set_random_seed(0)
    config = settings.make_config("fast", precision="mixed", optimizer="sgd",
                                  schedule="constant")
    state = train_state.create_train_state(config, 10, steps_per_epoch=10)
    state.optimizer.dynamic_scale.assign(scale)
    return state


def test_loss_scale_is_the_optimizers_variable_and_travels_in_checkpoints(tmp_path):
    rng = np.random.default_rng(0)
    images = tf.constant(rng.random((16, 28, 28, 1)), tf.float32)
    labels = tf.constant(rng.integers(0, 10, 16), tf.int64)
    # Whatever the scale, the update is the same (it cancels out), which holds only if the
    # compiled step multiplies by the scale the optimizer divides by; otherwise the two
    # updates differ by their scales' ratio, 2^13. With power-of-two scales float16
    # arithmetic scales exactly, except where values fall below float16's normal range at
    # the smaller scale: the smallest gradient entries, a few of float16's rounding units
    # of the whole. SGD makes the update proportional to the gradient; 16 units allow for
    # that rounding.
    updates = []
    for scale in (4.0, 2.0 ** 15):
        state = mixed_state(scale)
        before = [v.numpy() for v in state.model.trainable_variables]
        tf.function(train_validation_test.Steps(state, make_batch=None).update)(images, labels)
        updates.append([v.numpy() - b for v, b in zip(state.model.trainable_variables, before)])
        assert int(state.optimizer.step_counter.numpy()) == 1  # finite: a counted step
    for small, large in zip(*updates):
        assert np.linalg.norm(small - large) <= 16 * FLOAT16_UNIT * np.linalg.norm(large)
    # The scale and its counter are saved and restored with the optimizer's state.
    state = mixed_state(123.0)
    path = tmp_path / "mixed.checkpoint"
    path.write_bytes(cp_utils.checkpoint_bytes(state, {}))
    fresh = mixed_state(2.0 ** 15)
    cp_utils.apply_checkpoint(cp_utils.read_checkpoint(path, fresh), fresh)
    assert float(fresh.optimizer.dynamic_scale.numpy()) == 123.0


# One training step and a test pass of a small network, compiled by XLA or not, in a
# process of its own: XLA needs op determinism off, and TensorFlow's public API can turn it
# on but not off again. Prints a JSON line per precision and compilation.
XLA_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import basic_utils
    basic_utils.set_tensorflow_environment()
    import keras, numpy as np, tensorflow as tf
    import dataset_utils, model, settings, train_state, train_validation_test as tvt
    # TensorFloat-32 off: GPUs since Ampere use it for float32 by default, which would put
    # XLA's and cuDNN's results further apart than float32 rounding.
    tf.config.experimental.enable_tensor_float_32_execution(False)
    for precision in ("float32", "mixed"):
        config = settings.make_config(data_dir=sys.argv[2], batch_size=32, optimizer="sgd",
                                      schedule="constant", learning_rate=0.05,
                                      augment=False, precision=precision,
                                      deterministic=False)
        data = dataset_utils.load_processing_mnist(config, announce=lambda *_: None)
        for jit in (False, True):
            keras.utils.set_random_seed(0)
            # No dropout: XLA draws its masks with another random algorithm.
            network = model.MnistClassifier(8, ((8,), (8,)), 0.0, 10,
                                            dtype=model.DTYPE_POLICIES[precision])
            network(np.zeros((1, 28, 28, 1), "float32"))
            optimizer = train_state.make_optimizer(config, data.steps_per_epoch)
            optimizer.build(network.trainable_variables)
            state = train_state.TrainState(network, optimizer,
                                           train_state.WeightAverage(network, 0.9))
            before = [v.numpy() for v in network.variables]
            steps = tvt.Steps(state, data.make_batch, jit_compile=jit)
            sums = steps.train_step(*next(data.train_batches(1))).numpy().tolist()
            with state.evaluation_weights():
                test = tvt.go_test(steps, data.test_batches())
            print(json.dumps({
                "precision": precision, "jit": jit, "sums": sums, "test": test,
                "changes": [(v.numpy() - b).tolist() for v, b in zip(network.variables, before)
                            if v.dtype == "float32"],
                "average": [shadow.numpy().tolist() for shadow in state.average.shadows]}))
""")


def test_xla_steps_compute_what_the_plain_steps_compute(tmp_path):
    """One training step from the same weights (forward, backward, the optimizer, batch
    norm's moving statistics, the weight average and in mixed precision the loss scale),
    then a test pass. In float32 XLA differs from TensorFlow's kernels only in the order
    of its additions: far below 10^-4 of each number. In mixed precision both round in
    float16, each its own way: within a few dozen of float16's rounding units.

    Compared over one step only, because over several the two part ways for reasons that
    are not rounding: they break ties of max-pooling's gradient differently (augmentation's
    zero fill makes ties common), and XLA draws dropout masks with another random
    algorithm. Noise images keep max-pooling free of ties; SGD keeps the changes
    proportional to the gradients."""
    data_dir = helpers.write_mnist_folder(tmp_path / "noise", train=300, test=100,
                                          make=helpers.noise_digits)
    result = subprocess.run([sys.executable, "-c", XLA_SCRIPT, str(helpers.REPO_ROOT / "code"),
                             data_dir], capture_output=True, text=True,
                            env=helpers.environment(), timeout=300)
    assert result.returncode == 0, result.stderr
    runs = {(row["precision"], row["jit"]): row
            for row in map(json.loads, result.stdout.strip().splitlines())}
    for precision, relative in (("float32", 1e-4), ("mixed", 64 * FLOAT16_UNIT)):
        plain, compiled = runs[(precision, False)], runs[(precision, True)]
        assert compiled["sums"] == pytest.approx(plain["sums"], rel=relative)
        assert compiled["test"]["loss"] == pytest.approx(plain["test"]["loss"], rel=relative)
        # An image whose two best classes tie within that rounding may go either way.
        assert compiled["test"]["accuracy"] == pytest.approx(plain["test"]["accuracy"],
                                                             abs=0.02)
        for ours, theirs in zip(compiled["changes"] + compiled["average"],
                                plain["changes"] + plain["average"]):
            ours, theirs = np.asarray(ours), np.asarray(theirs)
            assert np.linalg.norm(ours - theirs) <= relative * np.linalg.norm(theirs)


def test_training_set_kept_as_floats_on_a_gpu_gives_the_same_batches(tiny_mnist_dir,
                                                                    monkeypatch):
    config = settings.make_config(data_dir=tiny_mnist_dir, batch_size=32)
    monkeypatch.setattr(dataset_utils, "keep_on_gpu", lambda: False)
    host = dataset_utils.load_processing_mnist(config, announce=lambda *_: None)
    assert host.training_tensors()[0].dtype == tf.uint8
    monkeypatch.setattr(dataset_utils, "keep_on_gpu", lambda: True)
    device = dataset_utils.load_processing_mnist(config, announce=lambda *_: None)
    assert device.training_tensors()[0].dtype == tf.float32
    for batch in itertools.islice(host.train_batches(1), 2):
        for made_on_host, made_on_device in zip(host.make_batch(*batch),
                                                device.make_batch(*batch)):
            np.testing.assert_array_equal(made_on_device, made_on_host)
