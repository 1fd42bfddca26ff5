"""Checkpoint and plot: saving and restoring training state atomically, and the PNGs.

Write, then publish: every file is written under a temporary name, flushed and fsynced,
then renamed into place. An epoch folder is assembled as `.epoch_NNNN.partial`, renamed to
`epoch_NNNN` when complete, and only then does `LATEST` move to name it. A crash at any
moment leaves either the previous state or the new one, never a half-written epoch that
resume would trust.

The plots are pure functions of their inputs (a history list, a matrix), so they can be
redrawn after a resume and tested without training.
"""

import io
import json
import os
import shutil
import time

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from learning_env_setting import LATEST_FILE, epoch_dir_name

METRIC_COLUMNS = (
    "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
    "test_loss", "test_accuracy", "seconds",
)
CHECKPOINT_FORMAT = 2
IN_PROGRESS_FILE = "in_progress.checkpoint"
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
    """Replace `path` with `data` (bytes or str) so readers see the old or new file, never half."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    temporary = f"{path}.tmp-{os.getpid()}"
    write_bytes_durably(temporary, data)
    os.replace(temporary, path)
    fsync_directory(os.path.dirname(path) or ".")


# ----------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------


def _variable_groups(model, optimizer, average):
    groups = [("model", model.variables), ("optimizer", optimizer.variables)]
    if average is not None:
        groups.append(("average", average.variables))
    return groups


def checkpoint_bytes(model, optimizer, epoch, history, config_record, step=0, train_sums=None,
                     average=None, seconds=0.0):
    """Serialise everything resume needs into one .npz archive (as bytes).

    Model variables include the batch-norm moving statistics and the dropout layer's
    random-generator state; optimizer variables include its iteration count (which drives
    the learning-rate schedule) and Adam's moments; `average` (a WeightAverage, if the run
    uses one) adds the averaged weights and their update count. Variables are stored in
    creation order and checked by shape when restored.

    An end-of-epoch checkpoint has `step=0`: `epoch` is complete. A mid-epoch checkpoint
    has `step` > 0: `epoch` is in progress, `step` of its batches are done and
    `train_sums` holds the running (loss sum, correct, count) of those batches and
    `seconds` the training time they took, so that a resumed epoch reports its whole time.
    """
    arrays = {
        "format": np.array(CHECKPOINT_FORMAT),
        "epoch": np.array(epoch),
        "step": np.array(step),
        "train_sums": np.asarray(train_sums if train_sums is not None else np.zeros(3),
                                 dtype=np.float64),
        "history": np.array(json.dumps(history)),
        "config": np.array(json.dumps(config_record, sort_keys=True)),
        "seconds": np.array(float(seconds)),
    }
    for prefix, variables in _variable_groups(model, optimizer, average):
        for index, variable in enumerate(variables):
            arrays[f"{prefix}/{index:04d}"] = np.asarray(variable.numpy())
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


class CheckpointError(Exception):
    """A checkpoint file that cannot be read or does not fit the model."""


def restore_checkpoint(path, model, optimizer, average=None):
    """Load weights and optimizer state from `path` into built `model` and `optimizer`
    (and the averaged weights into `average`, if given).

    Returns a dict with `epoch`, `step`, `train_sums`, `seconds`, `history` and `config`.
    Raises `CheckpointError` when the file is missing, truncated, corrupt (the archive's
    CRC-32 checks catch flipped bytes) or does not match the model; nothing is assigned
    then.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {key: archive[key] for key in archive.files}
    except Exception as error:  # zipfile, OSError, ValueError: all mean "unreadable"
        raise CheckpointError(f"{path} is unreadable ({type(error).__name__}: {error})") from None
    if int(contents.get("format", -1)) != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this program (format mismatch)")
    assignments = []
    for prefix, variables in _variable_groups(model, optimizer, average):
        keys = sorted(key for key in contents if key.startswith(prefix + "/"))
        if len(keys) != len(variables):
            raise CheckpointError(
                f"{path} holds {len(keys)} {prefix} variables, the {prefix} has {len(variables)}"
            )
        for key, variable in zip(keys, variables):
            value = contents[key]
            if tuple(value.shape) != tuple(variable.shape):
                raise CheckpointError(
                    f"{path}: {key} has shape {value.shape}, {variable.path} needs {variable.shape}"
                )
            assignments.append((variable, value))
    try:
        state = {
            "epoch": int(contents["epoch"]),
            "step": int(contents["step"]),
            "train_sums": np.asarray(contents["train_sums"], dtype=np.float64),
            # Checkpoints from before the time was kept count as 0 seconds.
            "seconds": float(contents["seconds"]) if "seconds" in contents else 0.0,
            "history": json.loads(str(contents["history"])),
            "config": json.loads(str(contents["config"])),
        }
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"{path} lacks or garbles {error}") from None
    # Assign only once everything was read and checked, so a bad file changes nothing.
    for variable, value in assignments:
        variable.assign(value)
    return state


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


def test_result_text(history):
    """test_result.txt: the test loss and accuracy of every epoch, for people."""
    lines = ["Test results per epoch (test split, evaluated after each epoch)", ""]
    lines.append(f"{'epoch':>5}  {'test loss':>10}  {'test accuracy':>13}")
    for row in history:
        lines.append(
            f"{row['epoch']:>5}  {row['test_loss']:>10.4f}  {100 * row['test_accuracy']:>12.2f}%"
        )
    best = max(history, key=lambda row: row["val_accuracy"])
    lines += [
        "",
        f"Best validation accuracy: epoch {best['epoch']} "
        f"({100 * best['val_accuracy']:.2f}% validation, {100 * best['test_accuracy']:.2f}% test).",
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------


def _margins(figure, left, right, bottom, top):
    """Fix the margins around the axes, in inches. Measuring the labels instead
    (tight_layout, or bbox_inches="tight" when saving) draws each figure a second time,
    which took almost half of the plotting time per epoch (both PNGs: 0.76 s with
    tight_layout, 0.41 s with fixed margins; medians of 10 alternating renders)."""
    width, height = figure.get_size_inches()
    figure.subplots_adjust(left=left / width, right=1 - right / width,
                           bottom=bottom / height, top=1 - top / height)


def _png_bytes(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def confusion_matrix_visualizer(matrix, class_names, title):
    """PNG (bytes) of a confusion matrix: true labels on rows, predictions on columns.

    Every cell shows its count, in white on dark cells and black on light ones. Colours
    use a logarithmic-like scaling (square root) so that the few errors off the diagonal
    stay visible next to the large diagonal counts.
    """
    matrix = np.asarray(matrix)
    size = len(class_names)
    longest = max(len(name) for name in class_names)
    figure = Figure(figsize=(6.4 + 0.06 * longest, 5.6 + 0.06 * longest))
    # Room for the tick labels (rotated when names are long), axis labels, title, and on
    # the right for the colour bar, which takes its space from the axes.
    _margins(figure, left=0.4 + 0.07 * longest, right=0.8,
             bottom=0.55 + 0.055 * longest if longest > 2 else 0.6, top=0.4)
    axes = figure.add_subplot()
    shade = np.sqrt(matrix / max(matrix.max(), 1))
    image = axes.imshow(shade, cmap="Blues", vmin=0.0, vmax=1.0)
    for row in range(size):
        for column in range(size):
            count = int(matrix[row, column])
            axes.text(
                column, row, str(count), ha="center", va="center",
                fontsize=8 if count < 1000 else 7,
                color="white" if shade[row, column] > 0.55 else "black",
            )
    axes.set_xticks(range(size), labels=class_names, rotation=45 if longest > 2 else 0,
                    ha="right" if longest > 2 else "center")
    axes.set_yticks(range(size), labels=class_names)
    axes.set_xlabel("Predicted label")
    axes.set_ylabel("True label")
    axes.set_title(title)
    colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    ticks = np.linspace(0, 1, 5)
    colorbar.set_ticks(ticks, labels=[f"{int(round((t ** 2) * matrix.max()))}" for t in ticks])
    colorbar.set_label("count (square-root colour scale)")
    return _png_bytes(figure)


def _padded_limits(values, floor=None, ceiling=None):
    low, high = float(np.min(values)), float(np.max(values))
    span = high - low
    pad = span * 0.08 if span > 0 else max(abs(high) * 0.05, 1e-3)
    low, high = low - pad, high + pad
    if floor is not None:
        low = max(low, floor)
    if ceiling is not None:
        high = min(high, ceiling)
    return low, high


def loss_acc_visualizer(history):
    """PNG (bytes) of train and validation loss (left axis) and accuracy (right axis).

    Axes fit the data (no fixed 70-100% window); accuracy is shown in percent. With one
    epoch the points are drawn as markers so the plot is not empty.
    """
    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(8.0, 4.8))
    # Room for both y-axes' labels, the title, and the legend below the x-axis label.
    _margins(figure, left=0.8, right=0.8, bottom=1.0, top=0.4)
    loss_axes = figure.add_subplot()
    accuracy_axes = loss_axes.twinx()
    # Markers only while they stay readable. Losses are circles (train filled, validation
    # hollow), accuracies larger hollow squares (train) and diamonds (validation), so that
    # points of the two axes that happen to coincide all stay visible.
    show_markers = len(epochs) <= 20
    large = len(epochs) <= 8
    loss_lines = [
        loss_axes.plot(epochs, [row[f"{split}_loss"] for row in history], color="tab:blue",
                       linestyle=style, marker="o" if show_markers else None,
                       markersize=6 if large else 4.5,
                       markerfacecolor=face, label=f"{name} loss")[0]
        for split, name, style, face in (("train", "train", "-", "tab:blue"),
                                         ("val", "validation", "--", "none"))
    ]
    accuracy_lines = [
        accuracy_axes.plot(epochs, [100 * row[f"{split}_accuracy"] for row in history],
                           color="tab:red", linestyle=style,
                           marker=marker if show_markers else None,
                           markersize=10 if large else 6.5,
                           markerfacecolor="none", label=f"{name} accuracy")[0]
        for split, name, style, marker in (("train", "train", "-", "s"),
                                           ("val", "validation", "--", "D"))
    ]
    if len(epochs) == 1:
        # One point per curve: line styles cannot tell them apart, so each is labelled,
        # losses to the left of the epoch and accuracies to the right.
        for axes, lines, side, text in ((loss_axes, loss_lines, -1, "{:.4f}"),
                                        (accuracy_axes, accuracy_lines, 1, "{:.2f}%")):
            for line in lines:
                value = line.get_ydata()[0]
                axes.annotate(f"{line.get_label()} {text.format(value)}", (epochs[0], value),
                              xytext=(side * 12, 0), textcoords="offset points", va="center",
                              ha="right" if side < 0 else "left", fontsize=8,
                              color=line.get_color())
    losses = [row[f"{split}_loss"] for row in history for split in ("train", "val")]
    accuracies = [100 * row[f"{split}_accuracy"] for row in history for split in ("train", "val")]
    loss_axes.set_ylim(*_padded_limits(losses, floor=0.0))
    accuracy_axes.set_ylim(*_padded_limits(accuracies, ceiling=100.0))
    last = epochs[-1]
    loss_axes.set_xlim(0.5, max(last, 1) + 0.5)
    if last <= 12:
        loss_axes.set_xticks(range(1, last + 1))
    else:
        loss_axes.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("loss (cross-entropy)", color="tab:blue")
    accuracy_axes.set_ylabel("accuracy (%)", color="tab:red")
    loss_axes.tick_params(axis="y", colors="tab:blue")
    accuracy_axes.tick_params(axis="y", colors="tab:red")
    loss_axes.grid(True, alpha=0.3)
    lines = loss_lines + accuracy_lines
    # Below the axes, so that the legend never hides a curve.
    loss_axes.legend(lines, [line.get_label() for line in lines], loc="upper center",
                     bbox_to_anchor=(0.5, -0.12), ncol=4, fontsize=8, frameon=False)
    final = history[-1]
    span = f"Epoch {last}" if last == 1 else f"Epochs 1-{last}"
    loss_axes.set_title(
        f"{span}: validation accuracy {100 * final['val_accuracy']:.2f}%, "
        f"loss {final['val_loss']:.4f}"
    )
    return _png_bytes(figure)


# ----------------------------------------------------------------------------------------
# Publishing one epoch
# ----------------------------------------------------------------------------------------


def save_losses_model(run_dir, epoch, files, history):
    """Publish the epoch folder `epoch_NNNN` with `files` (name -> bytes), then the run files.

    Steps, each durable before the next: write every file into `.epoch_NNNN.partial`;
    rename it to `epoch_NNNN`; rewrite metrics.csv and test_result.txt from `history`;
    finally point LATEST at the new folder. A folder of that name left by a crash between
    its rename and the LATEST update is not complete by definition and is replaced.
    """
    name = epoch_dir_name(epoch)
    final_path = os.path.join(run_dir, name)
    partial_path = os.path.join(run_dir, f".{name}.partial")
    if os.path.exists(partial_path):
        shutil.rmtree(partial_path)
    os.mkdir(partial_path)
    for file_name, data in files.items():
        write_bytes_durably(os.path.join(partial_path, file_name), data)
    fsync_directory(partial_path)
    if os.path.exists(final_path):
        stale = os.path.join(run_dir, f".{name}.stale-{os.getpid()}.partial")
        os.replace(final_path, stale)
        shutil.rmtree(stale)
    os.replace(partial_path, final_path)
    fsync_directory(run_dir)
    atomic_write(os.path.join(run_dir, "metrics.csv"), metrics_csv_text(history))
    atomic_write(os.path.join(run_dir, "test_result.txt"), test_result_text(history))
    atomic_write(os.path.join(run_dir, LATEST_FILE), name + "\n")
    # The mid-epoch checkpoint of this epoch is superseded by the published folder.
    remove_in_progress(run_dir)
    return final_path


def save_in_progress(run_dir, data):
    """Atomically replace the run's mid-epoch checkpoint with `data`."""
    atomic_write(os.path.join(run_dir, IN_PROGRESS_FILE), data)


def remove_in_progress(run_dir):
    path = os.path.join(run_dir, IN_PROGRESS_FILE)
    if os.path.exists(path):
        os.remove(path)
        fsync_directory(run_dir)


def epoch_metrics_json(row, confusion_matrix, class_names):
    """metrics.json of one epoch: its numbers and its validation confusion matrix."""
    record = dict(row)
    record["class_names"] = list(class_names)
    record["val_confusion_matrix"] = np.asarray(confusion_matrix).tolist()
    return json.dumps(record, indent=2) + "\n"
