"""The `predict` and `evaluate` commands: a trained run's model applied to the user's own images,
and an epoch's checkpoint re-evaluated on the test split.

    python code/main.py predict --run-dir RUN IMAGE [IMAGE ...] [--top-k K] [--json]
    python code/main.py evaluate --run-dir RUN [--epoch N] [--data-dir DIR] [--json]

`predict` reads the run's best/model.keras; `evaluate` rebuilds the run's training state
from config.json, loads the chosen epoch's checkpoint and evaluates it with the same
compiled step and batches as training did, so its test accuracy equals metrics.csv's.
Both read a run directory and never write to it.
"""

import json
import os
import sys

import basic_utils
import cp_utils
import dataset_utils
import digit_images
import learning_env_setting
import run_layout
import run_record
from basic_utils import UserError


def _read_json(path, what):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as error:
        raise UserError(f"cannot read {what} {path} ({error.strerror or error}).") from None
    except ValueError as error:
        raise UserError(f"{what} {path} is damaged ({error}).") from None


def _check_run_dir(run_dir):
    """Refuse a --run-dir that is missing or holds no run of this program."""
    if not os.path.isdir(run_dir):
        raise UserError(f"run directory {run_dir} does not exist; pass the --run-dir of a "
                        "trained run (python code/main.py prints it when it starts).")
    if not os.path.exists(os.path.join(run_dir, run_layout.CONFIG_FILE)):
        raise UserError(f"{run_dir} is not a run directory (it has no "
                        f"{run_layout.CONFIG_FILE}); pass the --run-dir of a trained run "
                        "(python code/main.py prints it when it starts).")


# ----------------------------------------------------------------------------------------
# predict
# ----------------------------------------------------------------------------------------


def predict(run_dir, paths, top_k=1, invert="auto", as_json=False, out=print):
    """Classify the image files `paths` with the run's best model; returns the exit code:
    0, or 1 when some file could not be read (each is reported, the rest classified)."""
    _check_run_dir(run_dir)
    best_dir = os.path.join(run_dir, run_layout.BEST_DIR)
    model_path = os.path.join(best_dir, run_layout.BEST_MODEL_FILE)
    if not os.path.exists(model_path):
        raise UserError(f"{run_dir} has no best model yet ({model_path} is missing; it is "
                        "written at the end of the first epoch): rerun its training command "
                        "until an epoch completes.")
    best = _read_json(os.path.join(best_dir, run_layout.BEST_RECORD_FILE), "best-model record")
    class_names = best["class_names"]
    if not 1 <= top_k <= len(class_names):
        raise UserError(f"--top-k must be from 1 to {len(class_names)}, got {top_k}.")
    # Images first: a wrong path is reported before TensorFlow's slow start.
    prepared, results = [], []
    for path in paths:
        try:
            image, details = digit_images.prepare_digit(path, invert=invert)
        except digit_images.ImageError as error:
            results.append({"path": path, "error": str(error)})
            continue
        prepared.append(image)
        results.append({"path": path, "inverted": bool(details.get("inverted"))})
    probabilities = _best_model_probabilities(model_path, prepared) if prepared else []
    readable = iter(probabilities)
    for result in results:
        if "error" in result:
            continue
        row = next(readable)
        order = sorted(range(len(class_names)), key=lambda index: -row[index])[:top_k]
        result["predictions"] = [{"class": class_names[index],
                                  "probability": float(row[index])} for index in order]
    if as_json:
        out(json.dumps({"run_dir": run_dir, "epoch": best["epoch"], "images": results},
                       indent=2))
    else:
        for result in results:
            if "error" in result:
                print(f"{result['path']}: error: {result['error']}", file=sys.stderr)
            else:
                guesses = ", ".join(f"{guess['class']} ({100 * guess['probability']:.1f}%)"
                                    for guess in result["predictions"])
                out(f"{result['path']}: {guesses}")
    return 1 if any("error" in result for result in results) else 0


def _best_model_probabilities(model_path, images):
    """Class probabilities [N, classes] of prepared `images` by the model at `model_path`."""
    import numpy as np

    basic_utils.import_tensorflow()
    import keras
    import tensorflow as tf

    import model  # noqa: F401  (registers the network classes with Keras)

    try:
        network = keras.saving.load_model(model_path)
    except Exception as error:  # a damaged archive raises many kinds
        raise UserError(f"cannot load {model_path} ({type(error).__name__}: {error}); "
                        "resume training once to republish it.") from None
    logits = network(np.stack(images).astype(np.float32), training=False)
    return tf.nn.softmax(tf.cast(logits, tf.float32)).numpy()


# ----------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------


def evaluate(run_dir, epoch=None, data_dir=None, as_json=False, out=print):
    """Re-evaluate the best (or `epoch`'s) checkpoint of the run on the test split and
    print loss, accuracy, the per-class table and the most-confused pairs; returns 0."""
    _check_run_dir(run_dir)
    config_path = os.path.join(run_dir, run_layout.CONFIG_FILE)
    try:
        record = run_record.read_record(config_path)
    except UserError:
        raise UserError(f"{config_path} cannot be read as this program's record; pass the "
                        "--run-dir of a trained run.") from None
    if record is None:
        raise UserError(f"{run_dir} holds no run of this program (no config.json of its "
                        "own); pass the --run-dir of a trained run.")
    latest = learning_env_setting.continue_setting(run_dir)
    metrics_path = os.path.join(run_dir, run_layout.METRICS_FILE)
    history = ([row for row in cp_utils.read_metrics_csv(metrics_path) if row["epoch"] <= latest]
               if latest and os.path.exists(metrics_path) else [])
    if not history:
        raise UserError(f"{run_dir} has no completed epoch yet; train first.")
    if epoch is None:
        row = cp_utils.best_row(history)
    else:
        matching = [row for row in history if row["epoch"] == epoch]
        if not matching:
            raise UserError(f"--epoch {epoch} is not a completed epoch of {run_dir} (it has "
                            f"epochs 1 to {history[-1]['epoch']}).")
        row = matching[0]
    config = run_record.config_from_record(record, data_dir=data_dir)
    if config.data_dir:
        dataset_utils.find_idx_files(config.data_dir, config.dataset)
    basic_utils.import_tensorflow()
    import training_loop  # noqa: E402  (TensorFlow loads here)

    result = training_loop.evaluate_epoch(config, record, run_dir, row["epoch"], out=out)
    result["best"] = row["epoch"] == cp_utils.best_row(history)["epoch"]
    if as_json:
        result.update(run_dir=run_dir, recorded_test_accuracy=row["test_accuracy"],
                      recorded_test_loss=row["test_loss"])
        out(json.dumps(result, indent=2))
    else:
        _print_evaluation(result, row, out)
    return 0


def _print_evaluation(result, row, out):
    """The evaluation of one epoch in words and tables."""
    out(f"Epoch {result['epoch']}{' (best by validation accuracy)' if result['best'] else ''} "
        f"on the test split ({result['count']:,} images): loss {result['loss']:.4f}, "
        f"accuracy {100 * result['accuracy']:.2f}% ({result['correct']:,} correct).")
    same = result["accuracy"] == row["test_accuracy"]
    out(f"metrics.csv recorded test accuracy {100 * row['test_accuracy']:.2f}% for this epoch"
        + (" (the same)." if same else f" ({result['accuracy'] - row['test_accuracy']:+.6f}: "
           "other libraries, kernels or data than in training)."))
    width = max(5, max(len(entry["class"]) for entry in result["per_class"]))
    out("")
    out(f"{'class':<{width}}  {'precision %':>11}  {'recall %':>8}  {'F1 %':>6}  {'support':>7}")

    def percent(value):
        return "-" if value is None else f"{100 * value:.2f}"

    for entry in result["per_class"]:
        out(f"{entry['class']:<{width}}  {percent(entry['precision']):>11}  "
            f"{percent(entry['recall']):>8}  {percent(entry['f1']):>6}  {entry['support']:>7,}")
    pairs = result["most_confused"]
    out("")
    if pairs:
        out("Most confused (true -> predicted: images):")
        for start in range(0, len(pairs), 5):
            out("  " + ", ".join(f"{pair['true']} -> {pair['predicted']}: {pair['count']}"
                                 for pair in pairs[start:start + 5]))
    else:
        out("No test image was misclassified.")
