"""The checkpoint: every variable of the training state under a stable name, checked on restore."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import cp_utils
import model as model_module
import run_record
import settings
import train_state
import train_validation_test


def trained_state(preset="standard", precision="float32", seed=0, **overrides):
    """A state of `preset` after two training steps on random images, so that every
    variable (weights, batch-norm statistics, dropout generator, Adam's moments, the
    average) has moved away from its initial value."""
    keras.utils.set_random_seed(seed)
    config = settings.make_config(preset, precision=precision, **overrides)
    state = train_state.create_train_state(config, 10, steps_per_epoch=10)
    rng = np.random.default_rng(seed)
    images = tf.constant(rng.random((8, 28, 28, 1)), tf.float32)
    labels = tf.constant(rng.integers(0, 10, 8), tf.int64)
    update = tf.function(train_validation_test.Steps(state, make_batch=None).update)
    for _ in range(2):
        update(images, labels)
    return state


def save(state, path, epoch=3, step=7):
    state.epoch, state.step = epoch, step
    state.train_sums, state.seconds = np.array([1.5, 6.0, 8.0]), 2.5
    state.history = [{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": 0.6}]
    path.write_bytes(cp_utils.checkpoint_bytes(state, {"seed": 0}))
    return path


@pytest.mark.parametrize("preset, precision", [("standard", "float32"), ("fast", "mixed"),
                                               ("seed", "float32")])
def test_every_variable_is_stored_under_its_name(tmp_path, preset, precision):
    state = trained_state(preset, precision)
    with np.load(save(state, tmp_path / "checkpoint")) as archive:
        stored = {key: archive[key] for key in archive.files}
    model, optimizer, average = state.model, state.optimizer, state.average
    model_keys = {key for key in stored if key.startswith("model/")}
    assert len(model_keys) == len(model.variables)
    # Keras' own paths, but for the dropout generator's state, which Keras keeps outside
    # the model under a per-process number; it is named by its layer instead.
    seed_states = [v for v in model.variables if v.name == "seed_generator_state"]
    expected = {f"model/{v.path}" for v in model.variables if v.name != "seed_generator_state"}
    expected |= {f"model/{model.name}/dropout/seed_generator_state" for _ in seed_states}
    assert model_keys == expected
    assert {key for key in stored if key.startswith("optimizer/")} == {
        f"optimizer/{v.path}" for v in optimizer.variables}
    assert len(optimizer.variables) == len([k for k in stored if k.startswith("optimizer/")])
    if average is None:
        assert not [key for key in stored if key.startswith("average/")]
    else:
        assert {key for key in stored if key.startswith("average/")} == {
            f"average/{v.path}" for v in model.trainable_variables} | {"average/count"}
        for variable, shadow in zip(average.targets, average.shadows):
            np.testing.assert_array_equal(stored[f"average/{variable.path}"], shadow.numpy())
    for variable in model.variables:
        if variable.name != "seed_generator_state":
            np.testing.assert_array_equal(stored[f"model/{variable.path}"], variable.numpy())
    assert int(stored["format_version"]) == run_record.FORMAT_VERSION
    assert (int(stored["state/epoch"]), int(stored["state/step"])) == (3, 7)
    assert json.loads(str(stored["state/history"]))[1]["val_accuracy"] == 0.6


def test_a_checkpoint_restores_into_a_network_built_later_in_the_process(tmp_path):
    """Keras numbers the names it makes up per process; the checkpoint's names must not
    depend on how many networks were built before."""
    saved = trained_state("standard", seed=1)
    path = save(saved, tmp_path / "checkpoint")
    trained_state("standard", seed=2)  # another network in between
    fresh = trained_state("standard", seed=3)
    checkpoint = cp_utils.read_checkpoint(path, fresh)
    cp_utils.apply_checkpoint(checkpoint, fresh)
    for (name, ours), theirs in zip(fresh.named_variables().items(),
                                    saved.named_variables().values()):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=name)
    assert (fresh.epoch, fresh.step, fresh.seconds) == (3, 7, 2.5)
    np.testing.assert_array_equal(fresh.train_sums, [1.5, 6.0, 8.0])
    assert fresh.history == saved.history and checkpoint.record == {"seed": 0}


def rewrite(path, change):
    """Rewrite the checkpoint at `path` with `change(arrays)` applied."""
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    change(arrays)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def test_renamed_reshaped_or_missing_variables_are_refused_before_anything_is_assigned(
        tmp_path):
    state = trained_state("standard")
    path = save(state, tmp_path / "checkpoint")
    fresh = trained_state("standard", seed=5)
    before = {name: variable.numpy() for name, variable in fresh.named_variables().items()}
    kernel = "model/mnist_classifier/stage2_block1_conv/kernel"

    def swap_names(arrays):  # as if two same-shaped layers had traded places
        other = "model/mnist_classifier/stage2_block2_conv/kernel"
        arrays[kernel], arrays[other] = arrays[other], arrays[kernel]
        arrays["model/mnist_classifier/stage2_block9_conv/kernel"] = arrays.pop(other)

    cases = [
        (swap_names, "1 of the state's are missing (first: model/mnist_classifier/stage2_block2"
                     "_conv/kernel); 1 are not the state's (first: model/mnist_classifier/"
                     "stage2_block9_conv/kernel)"),
        (lambda arrays: arrays.update({kernel: arrays[kernel][:2]}),
         f"{kernel} is float32[2, 3, 32, 64] in it, the state's variable is "
         "float32[3, 3, 32, 64]"),
        (lambda arrays: arrays.pop("average/count"), "missing (first: average/count)"),
        (lambda arrays: arrays.update(format_version=np.array(0)), "format 0"),
    ]
    for change, message in cases:
        path = save(state, tmp_path / "checkpoint")
        rewrite(path, change)
        with pytest.raises(cp_utils.CheckpointError) as error:
            cp_utils.read_checkpoint(path, fresh)
        assert message in str(error.value)
    for name, variable in fresh.named_variables().items():
        np.testing.assert_array_equal(variable.numpy(), before[name], err_msg=name)


def test_another_architecture_is_refused(tmp_path):
    path = save(trained_state("standard"), tmp_path / "checkpoint")
    deeper = model_module.MnistClassifier(24, ((32,), (64, 64, 64)), 0.3)
    deeper(np.zeros((1, 28, 28, 1), "float32"))
    optimizer = train_state.make_optimizer(settings.make_config(precision="float32"), 10)
    optimizer.build(deeper.trainable_variables)
    state = train_state.TrainState(deeper, optimizer, train_state.WeightAverage(deeper, 0.999))
    with pytest.raises(cp_utils.CheckpointError,
                       match=r"15 of the state's are missing \(first: average/mnist_classifier/"
                             r"stage2_block3_bn/beta\)"):
        cp_utils.read_checkpoint(path, state)
