"""The per-epoch loop: load the data, open the run directory, build or restore the state, train, report.

`run(config)` is what `main.py` calls. It decides everything that is printed or written
during a run: the steps return numbers, `basic_utils` formats them, `cp_utils` and `plots`
turn them into files when the loop says so.
"""

import contextlib
import dataclasses
import json
import os
import platform
import sys
import time

import keras
import matplotlib
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import basic_utils
import cp_utils
import dataset_utils
import learning_env_setting
import plots
import run_layout
import run_record
import settings
import train_state
import train_validation_test


@dataclasses.dataclass
class Run:
    """What the epochs of one invocation share, besides the training state they advance."""

    config: settings.Config  # with --precision resolved once the run directory is read
    data: dataset_utils.MnistData
    directory: learning_env_setting.RunDirectory
    out: object  # print, or what a test collects lines with
    resume_command: str  # what a failed write or a stop tells the user to run
    record: dict = None  # config.json
    steps: train_validation_test.Steps = None
    stop_signal: basic_utils.StopSignal = None
    saved: str = ""  # the newest state on disk, in words, for a divergence message


def run(config, raw=None, out=print, arguments=(), script="code/main.py"):
    """Train `config.epochs` epochs in the run directory of `config`; returns an exit code.

    `raw` injects `dataset_utils.RawData` (tests); `arguments` are the command-line
    arguments, used to print the command that resumes after an interruption.
    """
    data = dataset_utils.load_processing_mnist(config, raw=raw, announce=out)
    directory = learning_env_setting.dir_setting(
        learning_env_setting.run_dir_path(config, data.info["source"]), config.overwrite)
    try:
        return _run_in(Run(config, data, directory, out,
                           basic_utils.resume_command(script, arguments)))
    finally:
        directory.close()


def _run_in(run):
    """Check what this invocation may do in the opened run directory, then train."""
    directory, info = run.directory, run.data.info
    run.out(f"Run directory: {directory.path}")
    saved = directory.saved_record
    # --precision auto becomes float32 or mixed here, before any comparison or record.
    run.config = dataclasses.replace(run.config, precision=settings.resolve_precision(
        run.config.precision, saved and saved.get("precision"),
        bool(tf.config.list_physical_devices("GPU"))))
    run.record = run_record.make_record(run.config, info, library_versions())
    if saved is not None:
        _check_continuation(run, saved)
    if directory.latest_epoch >= run.config.epochs:
        _report_complete(run)
        return 0
    with _disk_errors(run):
        removed = directory.remove_temporaries()
    if removed:
        run.out(f"Removed half-written files from an interrupted run: {', '.join(removed)}")
    if not directory.latest_epoch and os.path.isdir(directory.epoch_path(1)):
        # What a crash between publishing the first epoch's folder and LATEST leaves.
        run.out(f"Note: {directory.epoch_path(1)} is not named by {run_layout.LATEST_FILE}, "
                "so it is not known to be complete; epoch 1 is trained again and replaces it.")
    run.out(f"Data: {info['description']}: {info['num_train']:,} train, "
            f"{info['num_validation']:,} validation, {info['num_test']:,} test images.")
    # From here on SIGINT and SIGTERM stop the run after its next step, with a checkpoint.
    run.stop_signal = basic_utils.StopSignal()
    try:
        state = _start(run)
        return _train_epochs(run, state)
    finally:
        run.stop_signal.restore()


def _check_continuation(run, saved):
    """Refuse another run's settings or data; note other libraries or kernels."""
    run_record.check_compatible(run.directory.path, saved, run.record)
    changed = run_record.version_differences(saved, run.record)
    if changed:
        run.out(f"Note: this run continues with other libraries or kernels than it was "
                f"trained with so far ({'; '.join(changed)}); it resumes correctly, but its "
                "numbers will differ slightly from a run that never stopped.")


def _report_complete(run):
    latest, epochs = run.directory.latest_epoch, run.config.epochs
    held = (f"{epochs} of {epochs} epochs done" if latest == epochs else
            f"it holds {latest} epochs, more than the {epochs} asked for; epochs are never "
            "removed")
    run.out(f"Run is complete ({held}); results are in {run.directory.path}. Nothing to do; "
            "raise --epochs to train longer.")


def _start(run):
    """Build the training state, clear an --overwrite's earlier run, restore the newest
    checkpoint, record config.json and compile the steps; returns the state."""
    config, data = run.config, run.data
    basic_utils.set_global_seed(config.seed, deterministic=config.deterministic)
    state = train_state.create_train_state(config, len(data.class_names), data.steps_per_epoch)
    trainable = sum(int(np.prod(variable.shape)) for variable in state.model.trainable_variables)
    run.out(f"Model: {config.model}, {trainable:,} trainable parameters; "
            f"{config.optimizer}, learning rate {config.learning_rate:g} ({config.schedule}), "
            f"batch {config.batch_size}, augmentation {settings.describe_augmentation(config)}, "
            + (f"weight average {config.weight_average:g} " if config.weight_average
               else "no weight average ")
            + f"(preset {config.preset}).")
    run.out(f"Compute: {describe_compute(config, run.record['versions']['device'])}.")
    # --overwrite takes effect only once the data, the settings and the network are ready:
    # a mistake in any of them leaves the earlier run as it was. (A later failure, such as
    # divergence, no longer has the earlier run to go back to.)
    with _disk_errors(run):
        removed = run.directory.clear_earlier_results()
    if removed:
        epochs = sum(1 for name in removed if run_layout.epoch_of(name) is not None)
        run.out(f"--overwrite: removed the earlier run's {_count(epochs, 'epoch folder')} and "
                f"{_count(len(removed) - epochs, 'other file')} from {run.directory.path} (its "
                "config.json is replaced next).")
    _restore_newest(run, state)
    # config.json follows the latest invocation (epochs may have grown); written atomically.
    with _disk_errors(run):
        cp_utils.atomic_write(run.directory.file_path(run_layout.CONFIG_FILE),
                              json.dumps(run.record, indent=2, sort_keys=True) + "\n")
    run.steps = train_validation_test.Steps(state, data.make_batch, jit_compile=config.xla)
    return state


def _restore_newest(run, state):
    """Load the newest readable checkpoint into `state`, or leave it fresh for a new run.

    Candidates, newest first: the mid-epoch checkpoint (if it continues the epoch after
    LATEST), then the epoch folders from LATEST downwards. A candidate that is missing,
    truncated, corrupt or does not fit is reported with a warning naming the file and
    skipped, so a damaged newest checkpoint costs the work since the previous one, never
    the run.
    """
    directory = run.directory
    latest = directory.latest_epoch
    candidates = [(directory.file_path(run_layout.IN_PROGRESS_FILE), latest + 1, True)]
    candidates += [(os.path.join(directory.epoch_path(epoch), run_layout.CHECKPOINT_FILE),
                    epoch + 1, False) for epoch in range(latest, 0, -1)]
    tried = 0
    for path, epoch, mid_epoch in candidates:
        if mid_epoch and not os.path.exists(path):
            continue
        tried += 1
        try:
            checkpoint = cp_utils.read_checkpoint(path, state)
        except cp_utils.CheckpointError as error:
            _warn(f"WARNING: skipping checkpoint {path}: {error}")
            continue
        if (checkpoint.epoch, checkpoint.step > 0) != (epoch, mid_epoch):
            _warn(f"WARNING: ignoring {path}: it holds epoch {checkpoint.epoch} after step "
                  f"{checkpoint.step}, but the newest complete epoch is {latest}.")
            continue
        cp_utils.apply_checkpoint(checkpoint, state)
        where = f" at step {state.step + 1} of {run.data.steps_per_epoch}" if mid_epoch else ""
        run.saved = (f"the mid-epoch checkpoint after step {state.step} of epoch {state.epoch}"
                     if mid_epoch else f"epoch {state.epoch - 1} ({os.path.dirname(path)})")
        run.out(f"Resuming after epoch {state.epoch - 1} (of {run.config.epochs}) from "
                f"{'mid-epoch ' if mid_epoch else ''}checkpoint {path}; starting epoch "
                f"{state.epoch}{where}.")
        _report_new_length(run)
        return
    if latest:
        # Starting over would replace the completed epoch folders one by one: refuse.
        raise basic_utils.UserError(
            f"{directory.path} holds {latest} completed epochs but none of its {tried} "
            "checkpoints can be read (see the warnings above); its files are left as they "
            "are. Restore a checkpoint, pass another --run-dir, or start over with --overwrite.")


def _report_new_length(run):
    """Say what changes when a resumed run's --epochs differs from its record's."""
    saved, config = (run.directory.saved_record or {}).get("epochs"), run.config
    if saved is None or saved == config.epochs:
        return
    changes = []
    if config.schedule == "one-cycle":
        changes.append("the one-cycle learning rate is re-planned over the new length")
    if settings.first_clean_epoch(config) is not None:
        changes.append(f"its last {config.clean_epochs} epochs without augmentation move to "
                       "the new end")
    run.out(f"Changing the run from {saved} to {config.epochs} epochs"
            + (f" ({'; '.join(changes)})" if changes else "") + ".")


def _warn(message):
    """A warning goes to standard error, beside the errors it may explain."""
    print(message, file=sys.stderr)


def _train_epochs(run, state):
    """Train from `state` to the last epoch; returns the exit code."""
    config = run.config
    try:
        while state.epoch <= config.epochs:
            _one_epoch(run, state)
            if state.epoch <= config.epochs:
                run.stop_signal.check()
    except basic_utils.StopRequested as stop:
        run.out(f"\nStopped (signal {stop.signal_number}). Completed epochs are saved "
                f"({len(state.history)} of {config.epochs}){stop.detail}.\n"
                f"Resume with: {run.resume_command}")
        return 128 + stop.signal_number
    except basic_utils.Diverged as problem:
        kept = (f"{run.saved} stays the newest state of {run.directory.path}" if run.saved
                else f"{run.directory.path} holds no checkpoint of this run yet")
        raise basic_utils.UserError(
            f"training diverged in epoch {state.epoch} at step "
            f"{min(state.step + 1, run.data.steps_per_epoch)} of {run.data.steps_per_epoch}: "
            f"{problem}. Nothing computed since is saved; {kept}. Lower --learning-rate (it "
            f"is {config.learning_rate:g}) and start over with --overwrite or another "
            "--run-dir.") from None
    best = max(state.history, key=lambda row: row["val_accuracy"])
    run.out(f"Done: {_count(config.epochs, 'epoch')}. Final test accuracy "
            f"{100 * state.history[-1]['test_accuracy']:.2f}%; best validation accuracy "
            f"{100 * best['val_accuracy']:.2f}% at epoch {best['epoch']} (test "
            f"{100 * best['test_accuracy']:.2f}%). Results in {run.directory.path}")
    return 0


def _one_epoch(run, state):
    """Train, validate, test and publish the epoch `state` is in, from its next step."""
    epoch, num_classes = state.epoch, len(run.data.class_names)
    laps = _Laps()
    train = _train_rest_of_epoch(run, state, laps)
    with state.evaluation_weights():
        validation = train_validation_test.go_validation(
            run.steps, run.data.validation_batches(), num_classes)
        laps.lap("validation")
        test = train_validation_test.go_test(run.steps, run.data.test_batches(), num_classes)
        laps.lap("test")
    if train_validation_test.diverged(validation["loss"], num_classes):
        raise basic_utils.Diverged(f"its validation loss was {validation['loss']:.4g}")
    state.check_finite()
    row = {
        "epoch": epoch,
        "train_loss": train["loss"],
        "train_accuracy": train["accuracy"],
        "val_loss": validation["loss"],
        "val_accuracy": validation["accuracy"],
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "seconds": sum(laps.timing.values()),
    }
    run.out(basic_utils.training_reporter(row, run.config.epochs, laps.timing))
    state.finish_epoch(row)
    _publish_epoch(run, state, row, validation["confusion_matrix"], laps)


class _Laps:
    """Seconds per phase of an epoch, each measured from the end of the one before."""

    def __init__(self):
        self.timing, self._clock = {}, time.perf_counter()

    def lap(self, name, earlier=0.0):
        """End phase `name`; `earlier` adds time spent on it before an interruption."""
        now = time.perf_counter()
        self.timing[name] = now - self._clock + earlier
        self._clock = now

    def elapsed(self):
        return time.perf_counter() - self._clock


def _train_rest_of_epoch(run, state, laps):
    """`go_train` from the state's next step to the end of its epoch; returns its result.

    Every `--checkpoint-every-steps` steps, and when SIGINT/SIGTERM arrived, the state after
    the step is written to the mid-epoch checkpoint; after a signal the epoch then stops
    with `StopRequested`. A signal that arrives in the epoch's last step or after it
    (during validation, test or saving) lets the epoch finish and be published first.
    """
    data, every, epoch = run.data, run.config.checkpoint_every_steps, state.epoch
    earlier = state.seconds  # training time of this epoch before an interruption

    def after_step(sums):
        stopping = run.stop_signal.received is not None
        step = state.step + 1
        save = (stopping or (every and step % every == 0)) and step < data.steps_per_epoch
        if save:
            state.check_finite()
        state.step, state.train_sums = step, sums.copy()
        state.seconds = earlier + laps.elapsed()
        if save:
            checkpoint = cp_utils.checkpoint_bytes(state, run.record)
            with _disk_errors(run):
                cp_utils.save_in_progress(run.directory.path, checkpoint)
            run.saved = f"the mid-epoch checkpoint after step {step} of epoch {epoch}"
        if stopping and save:
            run.stop_signal.check(f"; epoch {epoch} is checkpointed after step {step} of "
                                  f"{data.steps_per_epoch}")
        # A signal in the epoch's last step lets the epoch finish and be published.

    train = train_validation_test.go_train(
        run.steps, data.train_batches(epoch, skip=state.step), sums=state.train_sums,
        after_step=after_step, num_classes=len(data.class_names))
    laps.lap("train", earlier)
    return train


def _publish_epoch(run, state, row, confusion_matrix, laps):
    """Render the finished epoch's checkpoint and PNGs, then publish its folder."""
    epoch, class_names = row["epoch"], run.data.class_names
    title = (f"Validation confusion matrix, epoch {epoch} "
             f"(accuracy {100 * row['val_accuracy']:.2f}%)")
    files = {
        run_layout.CHECKPOINT_FILE: cp_utils.checkpoint_bytes(state, run.record),
        run_layout.CONFUSION_MATRIX_FILE: plots.confusion_matrix_visualizer(
            confusion_matrix, class_names, title),
        run_layout.LOSS_ACCURACY_FILE: plots.loss_acc_visualizer(state.history),
        run_layout.EPOCH_METRICS_FILE: cp_utils.epoch_metrics_json(
            row, confusion_matrix, class_names).encode("utf-8"),
    }
    laps.lap("render")
    with _disk_errors(run):
        folder = cp_utils.save_losses_model(run.directory.path, epoch, files, state.history)
    run.saved = f"epoch {epoch} ({folder})"
    laps.lap("save")
    run.out(f"  saved {folder} (plots and checkpoint rendered in {laps.timing['render']:.1f} "
            f"s, written in {laps.timing['save']:.2f} s)")


def library_versions():
    """What else decides the last bits of a run's numbers, recorded in config.json."""
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tensorflow_datasets": tfds.__version__,
        "numpy": np.__version__,
        "matplotlib": matplotlib.__version__,
        # The CPU kernels (basic_utils.set_tensorflow_environment).
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset"),
        # GPU kernels add up in other orders than CPU ones.
        "device": describe_device(),
    }


def describe_device():
    """'CPU', or the GPU TensorFlow computes on, e.g. 'GPU: NVIDIA H200'."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    details = tf.config.experimental.get_device_details(gpus[0])
    return f"GPU: {details.get('device_name', gpus[0].name)}"


def describe_compute(config, device):
    """Where and how the steps compute, in words, for the start-up report."""
    words = [device]
    if config.precision == "mixed":
        words.append("mixed precision (float16 arithmetic, float32 weights, loss scaling)"
                     + ("; slower than float32 on a CPU" if device == "CPU" else ""))
    else:
        words.append("float32")
    if config.xla:
        words.append("XLA-compiled steps" + (" (slower than without XLA on a CPU)"
                                             if device == "CPU" else ""))
    return ", ".join(words)


def _count(number, noun):
    return f"{number} {noun}{'' if number == 1 else 's'}"


@contextlib.contextmanager
def _disk_errors(run):
    """Turn a failed write or removal in the run directory (disk full, folder removed or
    made read-only) into one line. Every write is atomic, so what was published stays
    valid, and the resume command (without --overwrite) continues once the cause is fixed."""
    try:
        yield
    except OSError as error:
        raise basic_utils.UserError(
            f"cannot write to {run.directory.path} ({error.strerror or error}); the files "
            f"already published there are intact. Fix that (free space, say), then resume "
            f"with: {run.resume_command}") from None
