"""The per-epoch loop: train, validate, test, report, save; resumes after the newest complete epoch.

`run(config)` is what `main.py` calls. It wires the modules together and is the only place
that prints or writes during training: steps return numbers, `basic_utils` formats them and
`cp_utils` persists them.
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
import model as model_module
import train_validation_test


def library_versions():
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tensorflow_datasets": tfds.__version__,
        "numpy": np.__version__,
        "matplotlib": matplotlib.__version__,
        # The CPU kernels (basic_utils.set_tensorflow_environment): another setting changes
        # the last bits of the results, as another library version would.
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset"),
        # So does the device: GPU kernels add up in other orders than CPU ones.
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
        words.append("mixed precision (float16 arithmetic, float32 weights, loss scaling)" + (
            "; on a CPU it trains about 4x slower than float32" if device == "CPU" else ""))
    else:
        words.append("float32")
    if config.xla:
        words.append("XLA-compiled steps" + (
            " (on a CPU it trains more than 2x slower than without XLA)"
            if device == "CPU" else ""))
    return ", ".join(words)


def run(config, raw=None, out=print, arguments=None, script="code/main.py"):
    """Train `config.epochs` epochs in the run directory of `config`; returns an exit code.

    `raw` injects `dataset_utils.RawData` (tests); `arguments` are the command-line
    arguments, used to print the command that resumes after an interruption.
    """
    arguments = sys.argv[1:] if arguments is None else arguments
    learning_env_setting.validate_config(config)
    run_directory = learning_env_setting.dir_setting(config)
    try:
        return _run_locked(config, run_directory, raw, out, arguments, script)
    finally:
        run_directory.close()


def _run_locked(config, run_directory, raw, out, arguments, script):
    run_dir = run_directory.path
    out(f"Run directory: {run_dir}")
    saved_epochs = run_directory.saved_config.get("epochs") if run_directory.saved_config else None
    # --precision auto becomes float32 or mixed here, before any comparison or record.
    config = dataclasses.replace(config, precision=learning_env_setting.resolve_precision(
        config.precision, run_directory.saved_config,
        bool(tf.config.list_physical_devices("GPU"))))
    # Settings from the command line are compared before anything slow happens; the data
    # fingerprint is compared once the data is loaded.
    settings = dataclasses.asdict(config)
    settings["model"] = model_module.model_record_name(config.model, config.precision)
    learning_env_setting.check_compatible(run_directory, settings)
    if run_directory.latest_epoch >= config.epochs:
        held = (f"{config.epochs} of {config.epochs} epochs done"
                if run_directory.latest_epoch == config.epochs else
                f"it holds {run_directory.latest_epoch} epochs, more than the {config.epochs} "
                "asked for; epochs are never removed")
        out(f"Run is complete ({held}); results are in {run_dir}. Nothing to do; raise "
            "--epochs to train longer.")
        return 0
    resume_command = basic_utils.resume_command(script, arguments)
    with _disk_errors(run_dir, resume_command):
        removed = learning_env_setting.remove_stale_partials(run_dir)
    if removed:
        out(f"Removed half-written files from an interrupted run: {', '.join(removed)}")

    basic_utils.set_global_seed(config.seed, deterministic=config.deterministic)
    data = dataset_utils.load_processing_mnist(config, raw=raw, announce=out)
    model_name = model_module.model_record_name(config.model, config.precision)
    record = learning_env_setting.config_record(config, data.info, model_name, library_versions())
    learning_env_setting.check_compatible(run_directory, record)
    # A saved config.json means an earlier invocation trained here (--overwrite removes it),
    # at least up to a mid-epoch checkpoint.
    changed = (learning_env_setting.version_differences(run_directory.saved_config, record)
               if run_directory.saved_config else [])
    if changed:
        out(f"Note: this run continues with other libraries or kernels than it was trained "
            f"with so far ({'; '.join(changed)}); it resumes correctly, but its numbers will "
            "differ slightly from a run that never stopped.")
    out(
        f"Data: {data.info['description']}: {data.info['num_train']:,} train, "
        f"{data.info['num_validation']:,} validation, {data.info['num_test']:,} test images."
    )

    network = model_module.build_model(config.model, num_classes=len(data.class_names),
                                       precision=config.precision)
    optimizer = train_validation_test.make_optimizer(config, data.steps_per_epoch)
    optimizer.build(network.trainable_variables)
    average = train_validation_test.make_weight_average(config, network)
    out(f"Model: {model_name}, {network.count_params():,} parameters; "
        f"{config.optimizer}, learning rate {config.learning_rate:g} ({config.schedule}), "
        f"batch {config.batch_size}, augmentation "
        f"{learning_env_setting.describe_augmentation(config)}, "
        + (f"weight average {config.weight_average:g} " if config.weight_average
           else "no weight average ")
        + f"(preset {config.preset}).")
    out(f"Compute: {describe_compute(config, record['versions']['device'])}.")
    # --overwrite takes effect only now that the data and settings have proved usable.
    with _disk_errors(run_dir, resume_command):
        removed = run_directory.clear_earlier_results()
    if removed:
        epochs = sum(1 for name in removed
                     if learning_env_setting.EPOCH_DIR_PATTERN.match(name))
        out(f"--overwrite: removed the earlier run's {_count(epochs, 'epoch folder')} and "
            f"{_count(len(removed) - epochs, 'other file')} from {run_dir} (its config.json "
            "is replaced next).")

    state = _restore_newest(run_directory, network, optimizer, average, out)
    history = state["history"]
    start_epoch, start_step = state["epoch"], state["step"]
    if state["source"]:
        position = f" at step {start_step + 1} of {data.steps_per_epoch}" if start_step else ""
        out(f"Resuming after epoch {start_epoch - 1} (of {config.epochs}) from "
            f"{state['source']}; starting epoch {start_epoch}{position}.")
        if saved_epochs and config.epochs != saved_epochs:
            replan = (" (the one-cycle learning rate is re-planned over the new length)"
                      if config.schedule == "one-cycle" else "")
            out(f"Changing the run from {saved_epochs} to {config.epochs} epochs{replan}.")
    # config.json reflects the latest invocation (epochs may have grown); written atomically.
    with _disk_errors(run_dir, resume_command):
        cp_utils.atomic_write(
            os.path.join(run_dir, learning_env_setting.CONFIG_FILE),
            json.dumps(record, indent=2, sort_keys=True) + "\n",
        )

    steps = train_validation_test.Steps(network, optimizer, data.make_batch, average,
                                        jit_compile=config.xla)
    stop_signal = basic_utils.StopSignal()
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            resume_state = state if epoch == start_epoch and start_step else None
            history = _one_epoch(config, data, steps, network, optimizer, epoch, history,
                                 record, run_dir, out, stop_signal, resume_state,
                                 resume_command)
            if epoch < config.epochs:
                stop_signal.check()
    except basic_utils.StopRequested as stop:
        completed = history[-1]["epoch"] if history else 0
        out(
            f"\nStopped (signal {stop.signal_number}). Completed epochs are saved "
            f"({completed} of {config.epochs}){stop.detail}.\n"
            f"Resume with: {resume_command}"
        )
        return 128 + stop.signal_number
    finally:
        stop_signal.restore()
    best = max(history, key=lambda row: row["val_accuracy"])
    out(
        f"Done: {_count(config.epochs, 'epoch')}. Final test accuracy {100 * history[-1]['test_accuracy']:.2f}%; "
        f"best validation accuracy {100 * best['val_accuracy']:.2f}% at epoch {best['epoch']} "
        f"(test {100 * best['test_accuracy']:.2f}%). Results in {run_dir}"
    )
    return 0


def _count(number, noun):
    return f"{number} {noun}{'' if number == 1 else 's'}"


@contextlib.contextmanager
def _disk_errors(run_dir, resume_command):
    """Turn a failed write or removal in the run directory (disk full, folder removed or
    made read-only) into one line. Every write is atomic, so what was published stays
    valid, and `resume_command` (the command without --overwrite) continues once the
    cause is fixed."""
    try:
        yield
    except OSError as error:
        raise basic_utils.UserError(
            f"cannot write to {run_dir} ({error.strerror or error}); the files already "
            f"published there are intact. Fix that (free space, say), then resume with: "
            f"{resume_command}"
        ) from None


def _restore_newest(run_directory, network, optimizer, average, out):
    """Load the newest readable checkpoint into `network`, `optimizer` and `average` (the
    run's WeightAverage, or None).

    Candidates, newest first: the mid-epoch checkpoint (if it continues the epoch after
    LATEST), then the epoch folders from LATEST downwards. A candidate that is missing,
    truncated or corrupt is reported with a warning naming the file and skipped, so a
    damaged newest checkpoint costs the work since the previous one, never the run.
    Returns {'epoch': epoch to train next, 'step', 'train_sums', 'seconds', 'history',
    'source'}.
    """
    fresh = {"epoch": 1, "step": 0, "train_sums": None, "seconds": 0.0, "history": [],
             "source": None}
    latest = run_directory.latest_epoch
    candidates = []
    in_progress = os.path.join(run_directory.path, cp_utils.IN_PROGRESS_FILE)
    if os.path.exists(in_progress):
        candidates.append(in_progress)
    candidates += [
        os.path.join(run_directory.epoch_path(epoch), "checkpoint") for epoch in range(latest, 0, -1)
    ]
    for path in candidates:
        try:
            state = cp_utils.restore_checkpoint(path, network, optimizer, average)
        except cp_utils.CheckpointError as error:
            out(f"WARNING: skipping checkpoint {path}: {error}")
            continue
        if state["step"]:
            if state["epoch"] != latest + 1:
                out(f"WARNING: ignoring {path}: it continues epoch {state['epoch']}, "
                    f"but the newest complete epoch is {latest}.")
                continue
            state["source"] = f"mid-epoch checkpoint {path}"
        else:
            state["epoch"] += 1
            state["source"] = f"checkpoint {path}"
        return state
    if latest:
        # Starting over would replace the completed epoch folders one by one: refuse.
        raise basic_utils.UserError(
            f"{run_directory.path} holds {latest} completed epochs but none of its "
            f"{len(candidates)} checkpoints can be read (see the warnings above); its files "
            "are left as they are. Restore a checkpoint, pass another --run-dir, or start "
            "over with --overwrite.")
    return fresh


def _one_epoch(config, data, steps, network, optimizer, epoch, history, record, run_dir, out,
               stop_signal, resume=None, resume_command=""):
    """Train, validate, test and publish one epoch; returns the extended history.

    `resume` (a restored mid-epoch state) continues the epoch at its next batch;
    `resume_command` is what a failed write tells the user to run. Every
    `config.checkpoint_every_steps` steps, and when SIGINT/SIGTERM arrived, the state
    after the step is written to the run's mid-epoch checkpoint; after a signal the epoch
    then stops with `StopRequested`. A signal that arrives after training (during
    validation, test or saving) lets the epoch finish first.
    """
    clock = time.perf_counter()
    timing = {}

    def lap(name):
        nonlocal clock
        now = time.perf_counter()
        timing[name] = now - clock
        clock = now

    start_step = resume["step"] if resume else 0
    # Training time of this epoch before an interruption (0 for checkpoints that predate it).
    earlier = resume.get("seconds", 0.0) if resume else 0.0
    every = config.checkpoint_every_steps

    def after_step(step, sums):
        stopping = stop_signal.received is not None
        if (stopping or (every and step % every == 0)) and step < data.steps_per_epoch:
            with _disk_errors(run_dir, resume_command):
                cp_utils.save_in_progress(run_dir, cp_utils.checkpoint_bytes(
                    network, optimizer, epoch, history, record, step=step, train_sums=sums,
                    average=steps.average, seconds=earlier + time.perf_counter() - clock))
        if stopping:
            stop_signal.check(
                f"; epoch {epoch} is checkpointed after step {step} of {data.steps_per_epoch}")

    train = train_validation_test.go_train(
        steps, data.train_batches(epoch, skip=start_step), start_step=start_step,
        sums=resume["train_sums"] if resume else None, after_step=after_step)
    lap("train")
    timing["train"] += earlier
    with steps.evaluation_weights():
        validation = train_validation_test.go_validation(
            steps, data.validation_batches(), len(data.class_names)
        )
        lap("validation")
        test = train_validation_test.go_test(steps, data.test_batches(), len(data.class_names))
        lap("test")
    row = {
        "epoch": epoch,
        "train_loss": train["loss"],
        "train_accuracy": train["accuracy"],
        "val_loss": validation["loss"],
        "val_accuracy": validation["accuracy"],
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "seconds": sum(timing.values()),
    }
    history = history + [row]
    out(basic_utils.training_reporter(row, config.epochs, timing))
    title = (
        f"Validation confusion matrix, epoch {epoch} "
        f"(accuracy {100 * validation['accuracy']:.2f}%)"
    )
    files = {
        "checkpoint": cp_utils.checkpoint_bytes(network, optimizer, epoch, history, record,
                                                average=steps.average),
        "confusion_matrix.png": cp_utils.confusion_matrix_visualizer(
            validation["confusion_matrix"], data.class_names, title
        ),
        "losses_accs.png": cp_utils.loss_acc_visualizer(history),
        "metrics.json": cp_utils.epoch_metrics_json(
            row, validation["confusion_matrix"], data.class_names
        ).encode("utf-8"),
    }
    lap("render")
    with _disk_errors(run_dir, resume_command):
        folder = cp_utils.save_losses_model(run_dir, epoch, files, history)
    lap("save")
    out(f"  saved {folder} (plots and checkpoint rendered in {timing['render']:.1f} s, "
        f"written in {timing['save']:.2f} s)")
    return history
