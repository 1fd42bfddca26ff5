"""TensorBoard event files of a run: one file per epoch in <run-dir>/tensorboard/, made from the
epoch's published folder.

Each epoch's numbers (every column of metrics.csv and the learning rate) and its
validation confusion matrix go into an event file of their own, named after the epoch
(`run_layout.event_file_name`), at step = epoch. The file is written by `tf.summary` into
a temporary folder and renamed into place, so TensorBoard never reads half a file, and
writing an epoch again replaces its file instead of adding a second value. Files are made
from what the epoch folder holds, after the folder is published; `catch_up` writes those
an interruption left out. So a run interrupted and resumed any number of times holds
exactly one value per tag and epoch, in order, with none missing.
"""

import json
import os
import shutil

import tensorflow as tf

import cp_utils
import run_layout

# metrics.csv column -> TensorBoard tag. Tags sharing a prefix share a section, so train,
# validation and test loss sit side by side; `tensorboard --logdir runs` overlays runs.
SCALAR_TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/validation",
    "test_loss": "loss/test",
    "train_accuracy": "accuracy/train",
    "val_accuracy": "accuracy/validation",
    "test_accuracy": "accuracy/test",
    "learning_rate": "learning_rate",
    "seconds": "time/epoch_seconds",
}
CONFUSION_MATRIX_TAG = "validation/confusion_matrix"


def folder(run_dir):
    return os.path.join(run_dir, run_layout.TENSORBOARD_DIR)


def written_epochs(run_dir):
    """The epochs whose event file is in place."""
    path = folder(run_dir)
    if not os.path.isdir(path):
        return set()
    return {epoch for epoch in map(run_layout.event_file_epoch, os.listdir(path))
            if epoch is not None}


def write_epoch(run_dir, epoch):
    """Write (or replace) the event file of published `epoch` from its folder's
    metrics.json and confusion_matrix.png."""
    epoch_folder = os.path.join(run_dir, run_layout.epoch_dir_name(epoch))
    with open(os.path.join(epoch_folder, run_layout.EPOCH_METRICS_FILE), encoding="utf-8") as handle:
        metrics = json.load(handle)
    with open(os.path.join(epoch_folder, run_layout.CONFUSION_MATRIX_FILE), "rb") as handle:
        confusion_png = handle.read()
    target = folder(run_dir)
    os.makedirs(target, exist_ok=True)
    partial = os.path.join(target, run_layout.partial_dir_name(epoch))
    if os.path.exists(partial):
        shutil.rmtree(partial)
    os.mkdir(partial)
    writer = tf.summary.create_file_writer(partial)
    with writer.as_default():
        for column, tag in SCALAR_TAGS.items():
            if metrics.get(column) is not None:
                tf.summary.scalar(tag, float(metrics[column]), step=epoch)
        image = tf.io.decode_png(confusion_png, channels=3)[tf.newaxis]
        tf.summary.image(CONFUSION_MATRIX_TAG, image, step=epoch,
                         description="Validation confusion matrix (rows: true class).")
    writer.close()
    (written,) = os.listdir(partial)
    with open(os.path.join(partial, written), "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(os.path.join(partial, written), os.path.join(target, run_layout.event_file_name(epoch)))
    os.rmdir(partial)
    cp_utils.fsync_directory(target)


def catch_up(run_dir, latest_epoch):
    """Write the event files of published epochs 1..`latest_epoch` that are missing (an
    interruption between publishing an epoch and writing its file), and remove half-written
    ones; returns the epochs written."""
    target = folder(run_dir)
    if os.path.isdir(target):
        for name in os.listdir(target):
            if run_layout.is_temporary(name):
                shutil.rmtree(os.path.join(target, name), ignore_errors=True)
    missing = sorted(set(range(1, latest_epoch + 1)) - written_epochs(run_dir))
    for epoch in missing:
        write_epoch(run_dir, epoch)
    return missing
