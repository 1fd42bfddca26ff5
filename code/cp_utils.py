"""Checkpoints and published results: the training state to and from one file, written atomically.

Write, then publish: every file is written under a temporary name, flushed and fsynced,
then renamed into place. An epoch folder is assembled as `.epoch_NNNN.partial`, renamed to
`epoch_NNNN` when complete, and only then does `LATEST` move to name it. A crash at any
moment leaves either the previous state or the new one, never a half-written epoch that
resume would trust. The names come from `run_layout`; the plots from `plots`.
"""

import dataclasses
import io
import json
import os
import shutil
import time
import zipfile

import numpy as np

import run_layout
import run_record

METRIC_COLUMNS = (
    "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
    "test_loss", "test_accuracy", "learning_rate", "seconds",
)
# What a checkpoint holds beside the state's variables (whose names TrainState gives).
METADATA_KEYS = ("format_version", "config", "state/epoch", "state/step", "state/train_sums",
                 "state/seconds", "state/history")
# Test-only fault injection: seconds to pause inside every durable write, which widens
# the window in which the kill-and-resume test can kill a process mid-write.
_WRITE_PAUSE = float(os.environ.get("MNIST_TRAINER_WRITE_PAUSE", "0"))


# ----------------------------------------------------------------------------------------
# Atomic files
# ----------------------------------------------------------------------------------------


def fsync_directory(path):
    """Make a rename inside `path` durable (the directory entry itself is data)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_durably(path, data):
    """Write `data` to `path` and fsync it (no rename: for files inside a partial folder)."""
    with open(path, "wb") as handle:
        half = len(data) // 2
        handle.write(data[:half])
        if _WRITE_PAUSE:
            handle.flush()
            time.sleep(_WRITE_PAUSE)
        handle.write(data[half:])
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write(path, data):
    """Replace run file `path` with `data` (bytes or str) so that readers see the old or
    the new file, never half of one."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, run_layout.temporary_file_name(name))
    write_bytes_durably(temporary, data)
    os.replace(temporary, path)
    fsync_directory(folder or ".")


# ----------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------


class CheckpointError(Exception):
    """A checkpoint file that cannot be read or does not fit the training state; the
    message says why, the caller names the file."""


def checkpoint_bytes(state, record):
    """Serialise `state` (a `train_state.TrainState`) and the run's config `record` into
    one .npz archive, returned as bytes.

    Every variable is stored under its name (`TrainState.named_variables`): the model's
    weights, batch-norm statistics and dropout generator state; the optimizer's step
    counter, moments and (in mixed precision) loss scale; the averaged weights and their
    update count. `np.load` reads it without this program. Beside them: "format_version",
    "state/epoch", "state/step", "state/train_sums", "state/seconds", "state/history"
    (JSON) and "config" (JSON).
    """
    arrays = {
        "format_version": np.array(run_record.FORMAT_VERSION),
        "state/epoch": np.array(state.epoch),
        "state/step": np.array(state.step),
        "state/train_sums": np.asarray(state.train_sums, dtype=np.float64),
        "state/seconds": np.array(float(state.seconds)),
        "state/history": np.array(json.dumps(state.history)),
        "config": np.array(json.dumps(record, sort_keys=True)),
    }
    for name, variable in state.named_variables().items():
        arrays[name] = np.asarray(variable.numpy())
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@dataclasses.dataclass
class Checkpoint:
    """A checkpoint read and checked against a training state, not yet assigned to it."""

    values: dict  # variable name -> array
    epoch: int
    step: int
    train_sums: np.ndarray
    seconds: float
    history: list
    record: dict  # the config.json record it was written with


def read_checkpoint(path, state):
    """Read the checkpoint at `path` and check it against `state` (a TrainState).

    Raises `CheckpointError` when the file is missing, truncated or corrupt (the archive's
    CRC-32 checks catch flipped bytes), was written by another format, or does not hold
    exactly the state's variables, by name, with their shapes and types.
    """
    if not os.path.exists(path):
        raise CheckpointError("the file is missing")
    if not zipfile.is_zipfile(path):
        raise CheckpointError("it is not a checkpoint archive (damaged or replaced)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {key: archive[key] for key in archive.files}
    except Exception as error:  # zipfile, OSError, ValueError: all mean "unreadable"
        raise CheckpointError(f"it is unreadable ({type(error).__name__}: {error})") from None
    written = contents.get("format_version")
    if written is None or int(written) != run_record.FORMAT_VERSION:
        raise CheckpointError("it was written by another version of this program (format "
                              f"{'unrecorded' if written is None else int(written)})")
    variables = state.named_variables()
    stored = contents.keys() - set(METADATA_KEYS)
    missing, extra = sorted(variables.keys() - stored), sorted(stored - variables.keys())
    if missing or extra:
        problems = ([f"{len(missing)} of the state's are missing (first: {missing[0]})"]
                    if missing else [])
        problems += [f"{len(extra)} are not the state's (first: {extra[0]})"] if extra else []
        raise CheckpointError("it holds other variables than this network, optimizer and "
                              f"weight average: {'; '.join(problems)}")
    for name, variable in variables.items():
        value, dtype = contents[name], _numpy_dtype(variable)
        if tuple(value.shape) != tuple(variable.shape) or value.dtype != dtype:
            raise CheckpointError(
                f"{name} is {value.dtype}{list(value.shape)} in it, the state's variable is "
                f"{dtype}{list(variable.shape)}")
    try:
        return Checkpoint(
            values={name: contents[name] for name in variables},
            epoch=int(contents["state/epoch"]),
            step=int(contents["state/step"]),
            train_sums=np.asarray(contents["state/train_sums"], dtype=np.float64),
            seconds=float(contents["state/seconds"]),
            history=json.loads(str(contents["state/history"])),
            record=json.loads(str(contents["config"])),
        )
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"it lacks or garbles {error}") from None


def apply_checkpoint(checkpoint, state):
    """Assign a checkpoint `read_checkpoint` checked against `state` to it: every
    variable, and the position in the run."""
    for name, variable in state.named_variables().items():
        variable.assign(checkpoint.values[name])
    state.epoch, state.step = checkpoint.epoch, checkpoint.step
    state.train_sums, state.seconds = checkpoint.train_sums, checkpoint.seconds
    state.history = checkpoint.history


def _numpy_dtype(variable):
    """A Keras or TensorFlow variable's dtype as NumPy's."""
    dtype = variable.dtype
    return np.dtype(getattr(dtype, "as_numpy_dtype", dtype))


def save_in_progress(run_dir, data):
    """Atomically replace the run's mid-epoch checkpoint with `data`."""
    atomic_write(os.path.join(run_dir, run_layout.IN_PROGRESS_FILE), data)


def remove_in_progress(run_dir):
    path = os.path.join(run_dir, run_layout.IN_PROGRESS_FILE)
    if os.path.exists(path):
        os.remove(path)
        fsync_directory(run_dir)


# ----------------------------------------------------------------------------------------
# Metrics files
# ----------------------------------------------------------------------------------------


def metrics_csv_text(history):
    """metrics.csv: a header and one row per epoch; floats at full (repr) precision."""
    lines = [",".join(METRIC_COLUMNS)]
    for row in history:
        lines.append(",".join(
            str(row[column]) if column == "epoch" else repr(float(row[column]))
            for column in METRIC_COLUMNS
        ))
    return "\n".join(lines) + "\n"


def best_row(history):
    """The epoch row with the highest validation accuracy, equal accuracies going to the
    lower validation loss and then to the earlier epoch; None for no rows. The one rule
    for "the best epoch" (best/, the report, test_result.txt); test accuracy never counts."""
    if not history:
        return None
    return min(history, key=lambda row: (-row["val_accuracy"], row["val_loss"], row["epoch"]))


def read_metrics_csv(path):
    """The rows of a metrics.csv as dicts (epoch an integer, the rest floats)."""
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    header = lines[0].split(",")
    rows = []
    for line in lines[1:]:
        row = dict(zip(header, line.split(",")))
        rows.append({name: int(value) if name == "epoch" else float(value)
                     for name, value in row.items()})
    return rows


def test_result_text(history):
    """test_result.txt: the test loss and accuracy of every epoch, for people."""
    lines = ["Test results per epoch (test split, evaluated after each epoch)", ""]
    lines.append(f"{'epoch':>5}  {'test loss':>10}  {'test accuracy':>13}")
    for row in history:
        lines.append(
            f"{row['epoch']:>5}  {row['test_loss']:>10.4f}  {100 * row['test_accuracy']:>12.2f}%"
        )
    best = best_row(history)
    lines += [
        "",
        f"Best validation accuracy: epoch {best['epoch']} "
        f"({100 * best['val_accuracy']:.2f}% validation, {100 * best['test_accuracy']:.2f}% test).",
    ]
    return "\n".join(lines) + "\n"


def epoch_metrics_json(row, class_names, confusion_matrix, per_class, most_confused):
    """metrics.json of one epoch: its numbers, and of the whole validation split the
    confusion matrix, each class's precision, recall, F1 and support (`per_class`) and
    the most frequent mistakes (`most_confused`), as `train_validation_test` computes them."""
    record = dict(row)
    record["class_names"] = list(class_names)
    record["val_confusion_matrix"] = np.asarray(confusion_matrix).tolist()
    record["val_per_class"] = per_class
    record["val_most_confused"] = most_confused
    return json.dumps(record, indent=2) + "\n"


# ----------------------------------------------------------------------------------------
# Publishing one epoch
# ----------------------------------------------------------------------------------------


def save_losses_model(run_dir, epoch, files, history):
    """Publish the epoch folder `epoch_NNNN` with `files` (name -> bytes), then the run files.

    Steps, each durable before the next: write every file into `.epoch_NNNN.partial`;
    rename it to `epoch_NNNN`; rewrite metrics.csv and test_result.txt from `history`;
    point LATEST at the new folder; remove the mid-epoch checkpoint, which the folder
    supersedes. A folder of that name left by a crash between its rename and the LATEST
    update is not complete by definition and is replaced.
    """
    name = run_layout.epoch_dir_name(epoch)
    final_path = os.path.join(run_dir, name)
    partial_path = os.path.join(run_dir, run_layout.partial_dir_name(epoch))
    if os.path.exists(partial_path):
        shutil.rmtree(partial_path)
    os.mkdir(partial_path)
    for file_name, data in files.items():
        write_bytes_durably(os.path.join(partial_path, file_name), data)
    fsync_directory(partial_path)
    if os.path.exists(final_path):
        stale = os.path.join(run_dir, run_layout.stale_dir_name(epoch))
        os.replace(final_path, stale)
        shutil.rmtree(stale)
    os.replace(partial_path, final_path)
    fsync_directory(run_dir)
    atomic_write(os.path.join(run_dir, run_layout.METRICS_FILE), metrics_csv_text(history))
    atomic_write(os.path.join(run_dir, run_layout.TEST_RESULT_FILE), test_result_text(history))
    atomic_write(os.path.join(run_dir, run_layout.LATEST_FILE), name + "\n")
    remove_in_progress(run_dir)
    return final_path
