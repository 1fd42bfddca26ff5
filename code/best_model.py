"""The best epoch's model, ready to use outside this program: <run-dir>/best/.

The best epoch is the one with the highest validation accuracy (`cp_utils.best_row`), never
chosen by test accuracy. best/ holds

    model.keras    the network with the weights it was validated with (the weight average
                   when the run keeps one), for `keras.saving.load_model` once this
                   project's `model` module is imported (it registers the classes); like
                   the network in training it returns logits, not probabilities
    saved_model/   a TensorFlow SavedModel whose `serve` signature takes float32 images
                   [N, 28, 28, 1] in [0, 1] (ink 1, background 0) and returns class
                   probabilities [N, classes]; plain `tf.saved_model.load` reads it
    best.json      epoch, validation and test accuracy, class names, the input format,
                   the library versions

It is assembled in `.best.partial/` and swapped in with two renames, like an epoch folder;
a crash between them leaves no best/, which the next start rebuilds from the best
epoch's checkpoint (`needs_publishing`).
"""

import json
import os
import shutil

import keras
import tensorflow as tf

import cp_utils
import run_layout

# What the `serve` signature expects, in words (best.json and the README).
INPUT_FORMAT = {
    "shape": [None, 28, 28, 1],
    "dtype": "float32",
    "range": [0.0, 1.0],
    "polarity": "ink 1 (white), background 0 (black), as MNIST",
    "preparation": "grey levels / 255; a digit of your own: its ink's bounding box scaled "
                   "into 20x20 keeping the aspect ratio, then centred by centre of mass in "
                   "28x28 (what `main.py predict` does)",
}
SERVE_ENDPOINT = "serve"


def published_epoch(run_dir):
    """The epoch best/ holds, or None when there is no complete best/."""
    try:
        with open(os.path.join(run_dir, run_layout.BEST_DIR, run_layout.BEST_RECORD_FILE),
                  encoding="utf-8") as handle:
            return int(json.load(handle)["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def needs_publishing(run_dir, history):
    """The best row of `history` if best/ does not hold that epoch yet, else None."""
    best = cp_utils.best_row(history)
    if best is None or published_epoch(run_dir) == best["epoch"]:
        return None
    return best


def export_saved_model(network, path):
    """Write `network` as a SavedModel at `path` with a `serve` signature from float32
    images [N, 28, 28, 1] to class probabilities (float32)."""
    archive = keras.export.ExportArchive()
    archive.track(network)

    def serve(images):
        return tf.nn.softmax(tf.cast(network(images, training=False), tf.float32))

    archive.add_endpoint(
        name=SERVE_ENDPOINT, fn=serve,
        input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32, name="images")])
    archive.write_out(path, verbose=False)


def publish(run_dir, network, row, class_names, versions):
    """Replace best/ with `network` (holding the weights validated in `row`'s epoch)."""
    partial = os.path.join(run_dir, run_layout.best_partial_name())
    if os.path.exists(partial):
        shutil.rmtree(partial)
    os.mkdir(partial)
    network.save(os.path.join(partial, run_layout.BEST_MODEL_FILE))
    export_saved_model(network, os.path.join(partial, run_layout.BEST_SAVED_MODEL_DIR))
    record = {
        "epoch": row["epoch"],
        "val_accuracy": row["val_accuracy"],
        "val_loss": row["val_loss"],
        "test_accuracy": row["test_accuracy"],
        "test_loss": row["test_loss"],
        "chosen_by": "validation accuracy",
        "class_names": list(class_names),
        "input": INPUT_FORMAT,
        "files": {
            run_layout.BEST_MODEL_FILE: {
                "load": "keras.saving.load_model(path), after importing the project's "
                        "code/model.py",
                "output": "logits [N, classes] in class_names' order (apply a softmax "
                          "for probabilities)",
            },
            run_layout.BEST_SAVED_MODEL_DIR: {
                "load": f"tf.saved_model.load(path).{SERVE_ENDPOINT}(images)",
                "output": "class probabilities [N, classes] (softmax), in class_names' "
                          "order",
            },
        },
        "versions": versions,
    }
    with open(os.path.join(partial, run_layout.BEST_RECORD_FILE), "w", encoding="utf-8") as handle:
        handle.write(json.dumps(record, indent=2) + "\n")
    _fsync_tree(partial)
    final = os.path.join(run_dir, run_layout.BEST_DIR)
    if os.path.exists(final):
        stale = os.path.join(run_dir, run_layout.best_stale_name())
        os.replace(final, stale)
        os.replace(partial, final)
        shutil.rmtree(stale)
    else:
        os.replace(partial, final)
    cp_utils.fsync_directory(run_dir)
    return final


def _fsync_tree(path):
    """Make every file and folder under `path` durable before it is renamed into place."""
    for folder, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        cp_utils.fsync_directory(folder)
