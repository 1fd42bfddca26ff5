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
import best_model
import cp_utils
import dataset_utils
import distribution
import learning_env_setting
import plots
import progress
import report
import run_layout
import run_record
import settings
import summaries
import train_state
import train_validation_test

# The most confident validation mistakes shown in each epoch's misclassified.png.
MISCLASSIFIED_SHOWN = 36
# The most frequent (true, predicted) pairs kept in metrics.json and shown in the report.
CONFUSED_PAIRS_KEPT = 10


@dataclasses.dataclass
class Run:
    """What the epochs of one invocation share, besides the training state they advance."""

    config: settings.Config  # with --precision resolved once the run directory is read
    data: dataset_utils.MnistData
    directory: learning_env_setting.RunDirectory
    out: object  # print, or what a test collects lines with: epoch blocks, the final line
    note: object  # start-up notes: `out`, or nothing with --quiet
    resume_command: str  # what a failed write or a stop tells the user to run
    progress_mode: str = "quiet"  # progress.MODES: the bar, a heartbeat, or nothing
    record: dict = None  # config.json
    steps: train_validation_test.Steps = None
    stop_signal: basic_utils.StopSignal = None
    saved: str = ""  # the newest state on disk, in words, for a divergence message
    overhead_seconds: float = 0.0  # an epoch's evaluation and saving, for the time left
    distribution: "distribution.Distribution" = None


def run(config, raw=None, out=print, arguments=(), script="code/main.py"):
    """Train `config.epochs` epochs in the run directory of `config`; returns an exit code.

    `raw` injects `dataset_utils.RawData` (tests); `arguments` are the command-line
    arguments, used to print the command that resumes after an interruption.
    """
    # The strategy first: logical devices and a cluster can only be set up before
    # TensorFlow starts its runtime.
    note = (lambda *_: None) if config.quiet else out
    cluster = distribution.create(config, note=note)
    # Where the data come from is worth saying even with --quiet (the packaged digits are
    # a fallback the user must notice), so the loading notes always go out.
    data = dataset_utils.load_processing_mnist(config, raw=raw, announce=out,
                                               replicas=cluster.replicas)
    command = basic_utils.resume_command(script, arguments)
    mode = progress.choose_mode(config.quiet)
    if not cluster.is_chief:
        return _run_worker(Run(config, data, None, out, note, command, progress_mode=mode,
                               distribution=cluster))
    # Only the chief opens (and locks) the run directory.
    directory = learning_env_setting.dir_setting(
        learning_env_setting.run_dir_path(config, data.info["source"]), config.overwrite)
    try:
        return _run_in(Run(config, data, directory, out, note, command, progress_mode=mode,
                           distribution=cluster))
    finally:
        directory.close()


def _run_worker(run):
    """A worker other than the chief: it takes the chief's state, trains in step with the
    other workers and writes nothing (the chief publishes every file)."""
    cluster = run.distribution
    run.note(f"Worker {cluster.worker} of {cluster.workers}: the chief (worker 0) writes "
             "the run directory; this worker writes nothing.")
    run.stop_signal = basic_utils.StopSignal()
    try:
        with _worker_failures(run):
            # The precision comes from the chief, which alone knows what a resumed run
            # was trained in.
            _agree_on_settings(run)
            run.record = run_record.make_record(run.config, run.data.info, library_versions())
            run.record["distribution"] = cluster.record()
            state = _build_state(run)
            _share_state(run, state)
            if state.epoch > run.config.epochs:
                run.out(f"Run is complete ({run.config.epochs} epochs); the chief holds its "
                        "results. Nothing to do.")
                return 0
            run.steps = train_validation_test.Steps(state, run.data.make_batch,
                                                    strategy=cluster.strategy)
            return _train_epochs(run, state)
    finally:
        run.stop_signal.restore()


def _run_in(run):
    """Check what this invocation may do in the opened run directory, then train."""
    directory, info = run.directory, run.data.info
    run.note(f"Run directory: {directory.path}")
    saved = directory.saved_record
    # --precision auto becomes float32 or mixed here, before any comparison or record.
    run.config = dataclasses.replace(run.config, precision=settings.resolve_precision(
        run.config.precision, saved and saved.get("precision"),
        bool(tf.config.list_physical_devices("GPU"))))
    run.record = run_record.make_record(run.config, info, library_versions())
    run.record["distribution"] = run.distribution.record()
    if saved is not None:
        _check_continuation(run, saved)
    with _worker_failures(run):
        _agree_on_settings(run)
    with _disk_errors(run):
        removed = directory.remove_temporaries()
    if removed:
        run.note(f"Removed half-written files from an interrupted run: {', '.join(removed)}")
    if directory.latest_epoch >= run.config.epochs:
        # A run killed right after publishing its last epoch may lack what follows it. Its
        # config.json stays as it is, and so does the report made from it.
        _bring_outputs_up_to_date(run, _published_history(run), directory.saved_record)
        if run.distribution.workers > 1:
            # The other workers wait for the chief's state; a state past the last epoch
            # tells them that there is nothing to do.
            with _worker_failures(run):
                state = _build_state(run)
                state.epoch = directory.latest_epoch + 1
                _share_state(run, state)
        _report_complete(run)
        return 0
    if not directory.latest_epoch and os.path.isdir(directory.epoch_path(1)):
        # What a crash between publishing the first epoch's folder and LATEST leaves.
        run.note(f"Note: {directory.epoch_path(1)} is not named by {run_layout.LATEST_FILE}, "
                 "so it is not known to be complete; epoch 1 is trained again and replaces it.")
    run.note(f"Data: {info['description']}: {info['num_train']:,} train, "
            f"{info['num_validation']:,} validation, {info['num_test']:,} test images.")
    # From here on SIGINT and SIGTERM stop the run after its next step, with a checkpoint.
    run.stop_signal = basic_utils.StopSignal()
    try:
        with _worker_failures(run):
            state = _start(run)
            return _train_epochs(run, state)
    finally:
        run.stop_signal.restore()


def _check_continuation(run, saved):
    """Refuse another run's settings or data; note other libraries or kernels."""
    run_record.check_compatible(run.directory.path, saved, run.record)
    changed = run_record.version_differences(saved, run.record)
    moved = run_record.carry_distribution(saved, run.record, run.directory.latest_epoch)
    parts = ([f"other libraries or kernels ({'; '.join(changed)})"] if changed else [])
    parts += [f"another distribution ({moved})"] if moved else []
    if parts and run.directory.latest_epoch < run.config.epochs:
        run.note(f"Note: this run continues with {' and '.join(parts)} than it was trained "
                 "with so far; it resumes correctly, but its numbers will differ slightly "
                 "from a run that never changed.")


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
    state = _build_state(run)
    trainable = sum(int(np.prod(variable.shape)) for variable in state.model.trainable_variables)
    run.note(f"Model: {config.model}, {trainable:,} trainable parameters; "
            f"{config.optimizer}, learning rate {config.learning_rate:g} ({config.schedule}), "
            f"batch {config.batch_size}, augmentation {settings.describe_augmentation(config)}, "
            + (f"weight average {config.weight_average:g} " if config.weight_average
               else "no weight average ")
            + f"(preset {config.preset}).")
    run.note(f"Compute: {describe_compute(config, run.record['versions']['device'])}, "
             f"{run.distribution.describe()}.")
    # --overwrite takes effect only once the data, the settings and the network are ready:
    # a mistake in any of them leaves the earlier run as it was. (A later failure, such as
    # divergence, no longer has the earlier run to go back to.)
    with _disk_errors(run):
        removed = run.directory.clear_earlier_results()
    if removed:
        epochs = sum(1 for name in removed if run_layout.epoch_of(name) is not None)
        others = [name + ("/" if name in run_layout.RUN_FOLDERS else "") for name in removed
                  if run_layout.epoch_of(name) is None]
        run.note(f"--overwrite: removed the earlier run's {_count(epochs, 'epoch folder')}"
                 + (f" and {', '.join(others)}" if others else "")
                 + f" from {run.directory.path} (its config.json is replaced next).")
    _restore_newest(run, state)
    # config.json follows the latest invocation (epochs may have grown); written atomically.
    with _disk_errors(run):
        cp_utils.atomic_write(run.directory.file_path(run_layout.CONFIG_FILE),
                              json.dumps(run.record, indent=2, sort_keys=True) + "\n")
    # An interruption just after an epoch was published can leave its event file, best/
    # or the report behind; they are made from the published epochs, so they catch up.
    _bring_outputs_up_to_date(run, state.history, run.record)
    _share_state(run, state)
    run.steps = train_validation_test.Steps(state, data.make_batch, jit_compile=config.xla,
                                            strategy=run.distribution.strategy)
    return state


def _build_state(run):
    """Seed, then create the fresh training state in the run's strategy."""
    config, data = run.config, run.data
    basic_utils.set_global_seed(config.seed, deterministic=config.deterministic)
    return train_state.create_train_state(config, len(data.class_names), data.steps_per_epoch,
                                          strategy=run.distribution.strategy)


def _agree_on_settings(run):
    """In a multi-worker run, before any variable is made (making one is a step every
    worker takes together): the chief tells the others its resolved precision, and all
    compare their settings and data with the chief's, so that workers started differently
    all stop with one line instead of computing different things."""
    cluster = run.distribution
    if cluster.workers == 1:
        return
    config = run.config
    same = {name: getattr(config, name) for name in settings.RESULT_SETTINGS
            if name != "precision"}
    same.update(epochs=config.epochs, data=run.data.info["fingerprint"])
    mine = np.array([distribution.digest(same), settings.PRECISIONS.index(config.precision)],
                    np.int64)
    chief = distribution.share_from_chief(cluster, [mine])[0]
    precision = settings.PRECISIONS[int(chief[1])]
    differs = chief[0] != mine[0] or config.precision not in ("auto", precision)
    if not differs:
        run.config = dataclasses.replace(config, precision=precision)
    replicas_per_worker = cluster.replicas // cluster.workers
    others = int(distribution.sum_over_replicas(cluster, [int(differs)])[0]
                 ) // replicas_per_worker
    if differs:
        raise basic_utils.UserError(
            f"worker {cluster.worker} was started with other settings or data than the "
            "chief (worker 0); start every worker with the same command and the same data.")
    if others:
        raise basic_utils.UserError(
            f"{_count(others, 'worker')} of this run {'was' if others == 1 else 'were'} "
            "started with other settings or data than the chief (worker 0); start every "
            "worker with the same command and the same data.")


def _share_state(run, state):
    """Give every worker of a multi-worker run the chief's state: its variables and its
    place in the run (the chief alone reads the run directory)."""
    cluster = run.distribution
    if cluster.workers == 1:
        return
    position = np.array([state.epoch, state.step], np.int64)
    numbers = np.array([*state.train_sums, state.seconds], np.float64)
    variables = list(state.named_variables().values())
    shared = distribution.share_from_chief(
        cluster, [position, numbers] + [np.asarray(variable.numpy()) for variable in variables])
    if cluster.is_chief:
        return
    for variable, value in zip(variables, shared[2:]):
        variable.assign(value)
    state.epoch, state.step = int(shared[0][0]), int(shared[0][1])
    state.train_sums, state.seconds = shared[1][:3].copy(), float(shared[1][3])
    if state.epoch > 1 or state.step:
        run.saved = "the chief's newest checkpoint"
        run.note(f"Resuming from the chief's state: epoch {state.epoch}"
                 + (f" after step {state.step}" if state.step else "") + ".")


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
        run.note(f"Resuming after epoch {state.epoch - 1} (of {run.config.epochs}) from "
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
    run.note(f"Changing the run from {saved} to {config.epochs} epochs"
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
                _check_stop(run)
    except basic_utils.StopRequested as stop:
        saved = ("Completed epochs are saved" if run.distribution.is_chief
                 else "The chief saves the completed epochs")
        run.out(f"\nStopped (signal {stop.signal_number}"
                + ("" if run.stop_signal.received == stop.signal_number
                   else ", received by another worker")
                + f"). {saved} ({state.epoch - 1} of {config.epochs}){stop.detail}.\n"
                f"Resume with: {run.resume_command}"
                + (" (on every worker)" if run.distribution.workers > 1 else ""))
        return 128 + stop.signal_number
    except basic_utils.Diverged as problem:
        kept = ("the chief's checkpoints stay as they are" if run.directory is None
                else f"{run.saved} stays the newest state of {run.directory.path}" if run.saved
                else f"{run.directory.path} holds no checkpoint of this run yet")
        raise basic_utils.UserError(
            f"training diverged in epoch {state.epoch} at step "
            f"{min(state.step + 1, run.data.steps_per_epoch)} of {run.data.steps_per_epoch}: "
            f"{problem}. Nothing computed since is saved; {kept}. Lower --learning-rate (it "
            f"is {config.learning_rate:g}) and start over with --overwrite or another "
            "--run-dir.") from None
    if run.distribution.workers > 1:
        # The chief arrives here once the last epoch is published: no worker reports
        # success before that (a failed last publish ends the others with one line).
        run.steps.agree_to_stop(train_validation_test.stop_flags(None))
    if not run.distribution.is_chief:
        run.out(f"Done: {_count(config.epochs, 'epoch')}"
                + (f". Final test accuracy {100 * state.history[-1]['test_accuracy']:.2f}%"
                   if state.history else "")
                + ". The chief (worker 0) holds the results.")
        return 0
    best = cp_utils.best_row(state.history)
    run.out(f"Done: {_count(config.epochs, 'epoch')}. Final test accuracy "
            f"{100 * state.history[-1]['test_accuracy']:.2f}%; best validation accuracy "
            f"{100 * best['val_accuracy']:.2f}% at epoch {best['epoch']} (test "
            f"{100 * best['test_accuracy']:.2f}%). Results in {run.directory.path}")
    return 0


def _check_stop(run):
    """Between epochs: stop when a signal arrived, on every worker alike (they agree
    through one reduction, so none goes on into an epoch the others left)."""
    if not run.distribution.distributed:
        run.stop_signal.check()
        return
    agreed = train_validation_test.agreed_signal(run.steps.agree_to_stop(
        train_validation_test.stop_flags(run.stop_signal.received)).numpy())
    if agreed is not None:
        raise basic_utils.StopRequested(agreed)


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
        # The rate the schedule has reached at the end of the epoch.
        "learning_rate": float(state.optimizer.learning_rate),
        "seconds": sum(laps.timing.values()),
    }
    run.out(basic_utils.training_reporter(row, run.config.epochs, laps.timing))
    state.finish_epoch(row)
    if run.distribution.is_chief:
        _publish_epoch(run, state, row, validation, laps)


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
    shown = progress.EpochProgress(
        run.progress_mode, epoch, run.config.epochs, data.steps_per_epoch, state.step,
        run.config.batch_size, later_epochs=run.config.epochs - epoch,
        overhead_seconds=run.overhead_seconds)

    writes = run.distribution.is_chief

    def after_step(sums, agreed):
        step = state.step + 1
        # `agreed`: the signal any worker had received when this step began (every worker
        # sees the same). On one device a signal that came during the step counts too.
        # One in the epoch's last step lets the epoch finish and be published.
        if agreed is None and not run.distribution.distributed:
            agreed = run.stop_signal.received
        stopping = agreed is not None and step < data.steps_per_epoch
        save = stopping or bool(every and step % every == 0 and step < data.steps_per_epoch)
        if save:
            state.check_finite()  # on every worker: they hold the same values
        state.step, state.train_sums = step, sums.copy()
        state.seconds = earlier + laps.elapsed()
        if save and writes:
            checkpoint = cp_utils.checkpoint_bytes(state, run.record)
            with _disk_errors(run):
                cp_utils.save_in_progress(run.directory.path, checkpoint)
            run.saved = f"the mid-epoch checkpoint after step {step} of epoch {epoch}"
        if stopping:
            shown.close()
            raise basic_utils.StopRequested(
                agreed, f"; {'' if writes else 'the chief checkpoints '}epoch {epoch}"
                f"{' is checkpointed' if writes else ''} after step {step} of "
                f"{data.steps_per_epoch}")
        shown.after_step(step, sums)

    try:
        train = train_validation_test.go_train(
            run.steps, data.train_batches(epoch, skip=state.step), sums=state.train_sums,
            after_step=after_step, num_classes=len(data.class_names),
            stop=lambda: run.stop_signal.received)
    finally:
        shown.close()
    laps.lap("train", earlier)
    return train


def _publish_epoch(run, state, row, validation, laps):
    """Render the finished epoch's checkpoint, PNGs and metrics.json, publish its folder,
    then what is made from the published epochs: its TensorBoard events, best/ when the
    epoch is the best so far, and the report page."""
    epoch, class_names = row["epoch"], run.data.class_names
    confusion_matrix = validation["confusion_matrix"]
    title = (f"Validation confusion matrix, epoch {epoch} "
             f"(accuracy {100 * row['val_accuracy']:.2f}%)")
    files = {
        run_layout.CHECKPOINT_FILE: cp_utils.checkpoint_bytes(state, run.record),
        run_layout.CONFUSION_MATRIX_FILE: plots.confusion_matrix_visualizer(
            confusion_matrix, class_names, title),
        run_layout.LOSS_ACCURACY_FILE: plots.loss_acc_visualizer(state.history),
        run_layout.MISCLASSIFIED_FILE: misclassified_png(run.data, validation, epoch),
        run_layout.EPOCH_METRICS_FILE: cp_utils.epoch_metrics_json(
            row, class_names, confusion_matrix,
            train_validation_test.per_class_metrics(confusion_matrix, class_names),
            train_validation_test.most_confused_pairs(confusion_matrix, class_names,
                                                      CONFUSED_PAIRS_KEPT),
        ).encode("utf-8"),
    }
    laps.lap("render")
    with _disk_errors(run):
        folder = cp_utils.save_losses_model(run.directory.path, epoch, files, state.history)
    run.saved = f"epoch {epoch} ({folder})"
    laps.lap("save")
    with _disk_errors(run):
        summaries.write_epoch(run.directory.path, epoch)
        best = best_model.needs_publishing(run.directory.path, state.history)
        if best is not None:
            # Under a strategy the model's variables are mirrored; the exported model is
            # made from the published checkpoint on one device instead.
            source = (epoch_state(run.config, run.data, run.directory.path, epoch)
                      if run.distribution.distributed else state)
            with source.evaluation_weights():
                best_model.publish(run.directory.path, source.model, best, class_names,
                                   run.record["versions"])
        _write_report(run, state.history, run.record)
    laps.lap("outputs")
    run.overhead_seconds = sum(seconds for name, seconds in laps.timing.items()
                               if name != "train")
    run.out(f"  saved {folder} (rendered in {laps.timing['render']:.1f} s, written in "
            f"{laps.timing['save']:.2f} s; TensorBoard, report"
            + (", best model" if best is not None else "")
            + f" in {laps.timing['outputs']:.1f} s)")


def misclassified_png(data, validation, epoch):
    """misclassified.png: the most confident mistakes of `validation` (what `go_validation`
    returned for `data`'s validation split in `epoch`)."""
    shown = train_validation_test.most_confident_mistakes(
        validation["labels"], validation["predictions"], validation["confidences"],
        MISCLASSIFIED_SHOWN)
    mistakes = int((validation["labels"] != validation["predictions"]).sum())
    title = (f"Most confident validation mistakes, epoch {epoch} "
             f"({len(shown)} of {_count(mistakes, 'mistake')})")
    return plots.misclassified_visualizer(
        data.validation_images[shown], validation["labels"][shown],
        validation["predictions"][shown], validation["confidences"][shown],
        data.class_names, title)


def _published_history(run):
    """The rows of metrics.csv for the published epochs (those up to LATEST)."""
    path = run.directory.file_path(run_layout.METRICS_FILE)
    rows = cp_utils.read_metrics_csv(path) if os.path.exists(path) else []
    return [row for row in rows if row["epoch"] <= run.directory.latest_epoch]


def _bring_outputs_up_to_date(run, history, record):
    """Write what an interruption after publishing an epoch may have left out: its
    TensorBoard event file, best/ (from the best epoch's checkpoint) and the report (from
    config.json `record`)."""
    if not history:
        return
    directory = run.directory
    with _disk_errors(run):
        written = summaries.catch_up(directory.path, history[-1]["epoch"])
        best = best_model.needs_publishing(directory.path, history)
        if best is not None:
            state = epoch_state(run.config, run.data, directory.path, best["epoch"])
            with state.evaluation_weights():
                best_model.publish(directory.path, state.model, best, run.data.class_names,
                                   run.record["versions"])
        _write_report(run, history, record)
    if written or best is not None:
        made = ([f"TensorBoard events of {_count(len(written), 'epoch')}"] if written else [])
        made += [f"best/ (epoch {best['epoch']})"] if best is not None else []
        run.note(f"Wrote what an interruption had left out: {', '.join(made)}.")


def epoch_state(config, data, run_dir, epoch):
    """A fresh training state holding published `epoch`'s checkpoint."""
    state = train_state.create_train_state(config, len(data.class_names),
                                           data.steps_per_epoch)
    path = os.path.join(run_dir, run_layout.epoch_dir_name(epoch), run_layout.CHECKPOINT_FILE)
    try:
        cp_utils.apply_checkpoint(cp_utils.read_checkpoint(path, state), state)
    except cp_utils.CheckpointError as error:
        raise basic_utils.UserError(f"cannot read {path}: {error}. Restore it from a copy, "
                                    "or start over with --overwrite.") from None
    return state


def evaluate_epoch(config, record, run_dir, epoch, out=print):
    """Evaluate published `epoch` of the run in `run_dir` (made with `config` and config.json
    `record`) on the test split, with the weights its test accuracy was measured with and
    the same compiled step and batches; returns the numbers as a dict."""
    data = dataset_utils.load_processing_mnist(config, announce=out)
    if data.info["fingerprint"] != record["data_fingerprint"]:
        raise basic_utils.UserError(
            f"the data found ({data.info['description']}) are not the data {run_dir} was "
            f"trained on ({run_record.describe_data(record)}); pass --data-dir with the "
            "training's IDX files.")
    basic_utils.set_global_seed(config.seed, deterministic=config.deterministic)
    state = epoch_state(config, data, run_dir, epoch)
    steps = train_validation_test.Steps(state, data.make_batch, jit_compile=config.xla)
    class_names = data.class_names
    with state.evaluation_weights():
        metrics = train_validation_test.evaluate(steps, data.test_batches(), len(class_names))
    matrix = metrics["confusion_matrix"]
    return {
        "epoch": epoch,
        "count": int(matrix.sum()),
        "correct": int(matrix.trace()),
        "loss": metrics["loss"],
        "accuracy": metrics["accuracy"],
        "per_class": train_validation_test.per_class_metrics(matrix, class_names),
        "most_confused": train_validation_test.most_confused_pairs(matrix, class_names,
                                                                   CONFUSED_PAIRS_KEPT),
        "confusion_matrix": matrix.tolist(),
    }


def _write_report(run, history, record):
    """Rewrite report.html (atomically) from config.json `record`, `history` and the latest
    published epoch's folder, unless it holds that page already."""
    folder = run.directory.epoch_path(history[-1]["epoch"])
    with open(os.path.join(folder, run_layout.EPOCH_METRICS_FILE), encoding="utf-8") as handle:
        latest = json.load(handle)
    images = {}
    for key, name in (("losses_accs", run_layout.LOSS_ACCURACY_FILE),
                      ("confusion_matrix", run_layout.CONFUSION_MATRIX_FILE),
                      ("misclassified", run_layout.MISCLASSIFIED_FILE)):
        path = os.path.join(folder, name)
        if os.path.exists(path):  # epochs published before misclassified.png existed
            with open(path, "rb") as handle:
                images[key] = handle.read()
    # As config.json holds it (keys sorted), whether it comes from there or not, so that
    # the same run always gives the same page.
    record = json.loads(json.dumps(record, sort_keys=True))
    page = report.report_html(record, history, latest, images,
                              run_name=os.path.basename(run.directory.path)).encode("utf-8")
    path = run.directory.file_path(run_layout.REPORT_FILE)
    if os.path.exists(path):
        with open(path, "rb") as handle:
            if handle.read() == page:
                return
    cp_utils.atomic_write(path, page)


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
def _worker_failures(run):
    """In a multi-worker run, turn the error of a collective that another worker's death
    or silence aborted into `distribution.WorkerFailed` (main.py prints one line)."""
    if run.distribution.workers == 1:
        yield
        return
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
            tf.errors.DeadlineExceededError) as error:
        kept = ("the chief's checkpoints stay as they are" if run.directory is None
                else f"{run.saved} stays the newest state" if run.saved
                else "no checkpoint of this run was written yet")
        raise distribution.WorkerFailed(
            f"a worker of this multi-worker run failed or stopped answering "
            f"({distribution.failure_message(error)}); nothing half-written is published "
            f"and {kept}. Restart every worker with: {run.resume_command}") from None


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
