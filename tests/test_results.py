"""Results people use: per-class metrics, the misclassified grid, TensorBoard events, the best
model exported and reloaded elsewhere, the report page of a real run, and `evaluate`.

One tiny run trained in this process (module fixture) serves most checks; the TensorBoard
kill-and-resume and the fresh-process reloads run main.py or Python as subprocesses.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import browser
import cp_utils
import helpers
import report
import run_layout
import summaries
import train_validation_test

# Probabilities in [0, 1] computed in float32 by the same layers in another process or
# from a SavedModel graph may sum their products in another order; each rounding is within
# 2^-24 of the value, and a few hundred of them reordered stay well below this. A changed
# weight or preprocessing changes them by orders of magnitude more.
PROBABILITY_TOLERANCE = 1e-5
# TensorBoard stores scalars as float32: a float64 value comes back within half a float32
# unit in the last place, 2^-24 relative.
FLOAT32_RELATIVE = 2.0 ** -24


# ----------------------------------------------------------------------------------------
# Pure metrics
# ----------------------------------------------------------------------------------------


def test_per_class_metrics_from_a_hand_written_matrix():
    # True class on rows. Class 2 is never predicted (precision undefined) and class 3
    # never occurs (recall undefined).
    matrix = [[5, 1, 0, 0],
              [2, 6, 0, 1],
              [1, 0, 0, 0],
              [0, 0, 0, 0]]
    rows = train_validation_test.per_class_metrics(matrix, ["a", "b", "c", "d"])
    assert [row["support"] for row in rows] == [6, 9, 1, 0]
    assert rows[0]["precision"] == pytest.approx(5 / 8) and rows[0]["recall"] == pytest.approx(5 / 6)
    assert rows[0]["f1"] == pytest.approx(2 * (5 / 8) * (5 / 6) / (5 / 8 + 5 / 6))
    assert rows[1]["precision"] == pytest.approx(6 / 7) and rows[1]["recall"] == pytest.approx(6 / 9)
    assert rows[2]["precision"] is None and rows[2]["recall"] == 0.0 and rows[2]["f1"] is None
    assert rows[3]["recall"] is None and rows[3]["precision"] == 0.0 and rows[3]["f1"] is None
    pairs = train_validation_test.most_confused_pairs(matrix, ["a", "b", "c", "d"], limit=3)
    assert pairs == [{"true": "b", "predicted": "a", "count": 2},
                     {"true": "a", "predicted": "b", "count": 1},
                     {"true": "b", "predicted": "d", "count": 1}]


def test_most_confident_mistakes_come_first_and_right_answers_never():
    labels = np.array([0, 1, 2, 3, 4, 5])
    predictions = np.array([0, 2, 2, 0, 1, 4])
    confidences = np.array([0.99, 0.6, 0.95, 0.9, 0.6, 0.7])
    shown = train_validation_test.most_confident_mistakes(labels, predictions, confidences, 3)
    assert shown.tolist() == [3, 5, 1]  # 0.9, 0.7, then the first of the two 0.6s


# ----------------------------------------------------------------------------------------
# One tiny trained run
# ----------------------------------------------------------------------------------------


def _arguments(data_dir, run_dir, epochs=3):
    return ["--data-dir", data_dir, "--run-dir", run_dir, "--preset", "fast",
            "--epochs", epochs, "--batch-size", 16, "--checkpoint-every-steps", 5]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    # Noise with random labels: nothing to learn, so every epoch makes confident mistakes.
    return helpers.write_mnist_folder(tmp_path_factory.mktemp("idx"), train=600, test=100,
                                      make=helpers.noise_digits)


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A 3-epoch run of the fast preset on synthetic digits, trained in this process."""
    import main

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    assert main.main([str(argument) for argument in _arguments(data_dir, run_dir)]) == 0
    return run_dir


def _epoch_folder(run_dir, epoch):
    return pathlib.Path(run_dir) / run_layout.epoch_dir_name(epoch)


def _epoch_state_and_data(run_dir, epoch):
    """The training state of a published epoch and the run's data, rebuilt in this process."""
    import dataset_utils
    import run_record
    import training_loop

    record = json.loads((pathlib.Path(run_dir) / "config.json").read_text())
    config = run_record.config_from_record(record)
    data = dataset_utils.load_processing_mnist(config)
    return training_loop.epoch_state(config, data, str(run_dir), epoch), data


def test_metrics_json_holds_whole_split_per_class_numbers(trained):
    rows = helpers.read_metrics(trained)
    for row in rows:
        metrics = json.loads((_epoch_folder(trained, int(row["epoch"])) / "metrics.json").read_text())
        matrix = np.array(metrics["val_confusion_matrix"])
        per_class = metrics["val_per_class"]
        assert [entry["class"] for entry in per_class] == metrics["class_names"]
        assert [entry["support"] for entry in per_class] == matrix.sum(axis=1).tolist()
        assert sum(entry["support"] for entry in per_class) == 60  # the validation split
        correct = sum(entry["recall"] * entry["support"] for entry in per_class
                      if entry["recall"] is not None)
        assert correct / 60 == pytest.approx(row["val_accuracy"])
        for pair in metrics["val_most_confused"]:
            true, predicted = (metrics["class_names"].index(pair[key]) for key in ("true", "predicted"))
            assert pair["count"] == matrix[true, predicted] and true != predicted
        assert metrics["learning_rate"] == row["learning_rate"]


def test_misclassified_grid_shows_the_epochs_most_confident_mistakes(trained):
    """misclassified.png is exactly the grid of the epoch's real validation predictions."""
    import plots
    import training_loop

    state, data = _epoch_state_and_data(trained, 1)
    steps = train_validation_test.Steps(state, data.make_batch)
    with state.evaluation_weights():
        validation = train_validation_test.go_validation(
            steps, data.validation_batches(), len(data.class_names))
    shown = train_validation_test.most_confident_mistakes(
        validation["labels"], validation["predictions"], validation["confidences"],
        training_loop.MISCLASSIFIED_SHOWN)
    mistakes = int((validation["labels"] != validation["predictions"]).sum())
    assert 0 < len(shown) == min(mistakes, 36)
    # Its confidences really are the model's: the softmax maximum of each shown image.
    logits = state.model(data.validation_images[shown].astype(np.float32) / 255.0, training=False)
    np.testing.assert_allclose(np.max(_softmax(np.asarray(logits)), axis=1),
                               validation["confidences"][shown], atol=PROBABILITY_TOLERANCE)
    published = (_epoch_folder(trained, 1) / "misclassified.png").read_bytes()
    redrawn = training_loop.misclassified_png(data, validation, 1)
    assert published == redrawn
    # And an epoch that gets everything right says so instead of showing an empty grid.
    empty = plots.misclassified_visualizer(np.zeros((0, 28, 28)), [], [], [],
                                           data.class_names, "none")
    assert empty.startswith(b"\x89PNG") and empty != published


def _softmax(logits):
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def test_tensorboard_holds_one_value_per_tag_and_epoch(trained):
    events = _read_events(trained)
    rows = helpers.read_metrics(trained)
    _assert_events_match(events, rows)


def _read_events(run_dir):
    """{tag: [(step, value)]} of every event file in the run's tensorboard/, in file order."""
    import tensorflow as tf

    events = {}
    folder = pathlib.Path(run_dir) / run_layout.TENSORBOARD_DIR
    for path in sorted(folder.iterdir()):
        assert run_layout.event_file_epoch(path.name) is not None, path.name
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                events.setdefault(value.tag, []).append(
                    (event.step, tf.make_ndarray(value.tensor)))
    return events


def _assert_events_match(events, rows):
    epochs = [int(row["epoch"]) for row in rows]
    expected_tags = set(summaries.SCALAR_TAGS.values()) | {summaries.CONFUSION_MATRIX_TAG}
    assert set(events) == expected_tags
    for column, tag in summaries.SCALAR_TAGS.items():
        # One value per epoch, in order: no epoch missing, none twice, no step backwards.
        assert [step for step, _ in events[tag]] == epochs, tag
        for (_, value), row in zip(events[tag], rows):
            assert float(value) == pytest.approx(row[column], rel=FLOAT32_RELATIVE, abs=1e-30)
    images = events[summaries.CONFUSION_MATRIX_TAG]
    assert [step for step, _ in images] == epochs
    for _, value in images:  # [width, height, encoded PNG]
        assert value[2].startswith(b"\x89PNG")


def test_tensorboard_after_kills_and_a_lost_event_file(data_dir, tmp_path):
    """Killed mid-epoch, then killed after publishing an epoch but before its event file
    (simulated by removing the file and leaving a half-written one): the resumed run still
    has exactly one value per tag and epoch."""
    run_dir = tmp_path / "run"
    arguments = _arguments(data_dir, run_dir, epochs=3)
    process = helpers.start_main(arguments)
    helpers.wait_for(lambda: (run_dir / "in_progress.checkpoint").exists()
                     and (run_dir / "LATEST").exists(), process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    latest = int((run_dir / "LATEST").read_text().strip()[len("epoch_"):])
    folder = run_dir / run_layout.TENSORBOARD_DIR
    (folder / run_layout.event_file_name(latest)).unlink(missing_ok=True)
    partial = folder / run_layout.partial_dir_name(latest)
    partial.mkdir(exist_ok=True)
    (partial / "events.out.tfevents.123.host.1.v2").write_bytes(b"\x00half")
    result = helpers.run_main_process(arguments)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TensorBoard events of 1 epoch" in result.stdout
    assert not partial.exists()
    _assert_events_match(_read_events(run_dir), helpers.read_metrics(run_dir))


def test_a_finished_run_writes_what_a_kill_after_its_last_epoch_left_out(trained, capsys):
    """The last epoch published, then a kill before its event file, best/ and the report:
    rerunning the command fills them in and trains nothing."""
    run_dir = pathlib.Path(trained)
    saved = {name: (run_dir / name) for name in ("report.html", "best")}
    backup = run_dir.parent / "backup"
    shutil.copytree(run_dir, backup)
    try:
        (run_dir / "report.html").unlink()
        shutil.rmtree(run_dir / "best")
        (run_dir / run_layout.TENSORBOARD_DIR / run_layout.event_file_name(3)).unlink()
        code, out, err = helpers.run_main(capsys, *_arguments(*_trained_args(trained)))
        assert code == 0, out + err
        assert "Run is complete" in out and "best/ (epoch" in out
        assert all(path.exists() for path in saved.values())
        assert (run_dir / "report.html").read_bytes() == (backup / "report.html").read_bytes()
        assert (json.loads((run_dir / "best" / "best.json").read_text())
                == json.loads((backup / "best" / "best.json").read_text()))
        _assert_events_match(_read_events(run_dir), helpers.read_metrics(run_dir))
    finally:
        shutil.rmtree(backup)


def _trained_args(trained):
    config = json.loads((pathlib.Path(trained) / "config.json").read_text())
    return config["data_dir"], trained


# ----------------------------------------------------------------------------------------
# The best model, outside this program
# ----------------------------------------------------------------------------------------

_RELOAD_KERAS = """
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np, keras, tensorflow as tf
import model  # registers the network classes
network = keras.saving.load_model(sys.argv[2])
images = np.load(sys.argv[3])
np.save(sys.argv[4], tf.nn.softmax(network(images, training=False)).numpy())
"""

_RELOAD_SAVED_MODEL = """
import sys
import numpy as np, tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
images = np.load(sys.argv[2])
serve = loaded.signatures["serve"]
spec = serve.structured_input_signature[1]["images"]
assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, 28, 28, 1], spec
(probabilities,) = serve(images=tf.constant(images)).values()
np.save(sys.argv[3], probabilities.numpy())
assert not any(name in sys.modules for name in ("model", "train_state", "settings"))
"""


def test_best_model_reloads_in_fresh_processes(trained, tmp_path):
    rows = helpers.read_metrics(trained)
    best_epoch = int(cp_utils.best_row(rows)["epoch"])
    best_dir = pathlib.Path(trained) / "best"
    record = json.loads((best_dir / "best.json").read_text())
    assert record["epoch"] == best_epoch and record["chosen_by"] == "validation accuracy"
    assert record["test_accuracy"] == rows[best_epoch - 1]["test_accuracy"]
    assert record["class_names"] == [str(digit) for digit in range(10)]

    state, data = _epoch_state_and_data(trained, best_epoch)
    images = (data.test_images[:40].astype(np.float32) / 255.0).reshape(-1, 28, 28, 1)
    with state.evaluation_weights():
        expected = _softmax(np.asarray(state.model(images, training=False)))
    np.save(tmp_path / "images.npy", images)
    environment = helpers.environment()
    environment.pop("PYTHONPATH", None)  # the SavedModel process never sees this project
    subprocess.run([sys.executable, "-c", _RELOAD_KERAS, str(helpers.REPO_ROOT / "code"),
                    str(best_dir / "model.keras"), str(tmp_path / "images.npy"),
                    str(tmp_path / "keras.npy")], check=True, cwd=tmp_path, env=environment,
                   timeout=300)
    subprocess.run([sys.executable, "-c", _RELOAD_SAVED_MODEL, str(best_dir / "saved_model"),
                    str(tmp_path / "images.npy"), str(tmp_path / "saved.npy")], check=True,
                   cwd=tmp_path, env=environment, timeout=300)
    for name in ("keras.npy", "saved.npy"):
        probabilities = np.load(tmp_path / name)
        assert probabilities.shape == (40, 10) and probabilities.dtype == np.float32
        np.testing.assert_allclose(probabilities, expected, atol=PROBABILITY_TOLERANCE,
                                   err_msg=name)


# ----------------------------------------------------------------------------------------
# evaluate and the report page
# ----------------------------------------------------------------------------------------


def test_evaluate_equals_metrics_csv(trained, capsys):
    rows = helpers.read_metrics(trained)
    best = cp_utils.best_row(rows)
    code, out, err = helpers.run_main(capsys, "evaluate", "--run-dir", trained, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["epoch"] == best["epoch"] and result["best"]
    assert result["accuracy"] == best["test_accuracy"]
    assert result["count"] == 100 and sum(row["support"] for row in result["per_class"]) == 100
    code, out, err = helpers.run_main(capsys, "evaluate", "--run-dir", trained, "--epoch", 1)
    assert code == 0, err
    assert f"accuracy {100 * rows[0]['test_accuracy']:.2f}%" in out and "(the same)" in out
    assert "precision" in out and "support" in out
    code, out, err = helpers.run_main(capsys, "evaluate", "--run-dir", trained, "--epoch", 9)
    assert code == 2 and err.count("\n") == 1 and "--epoch 9 is not a completed epoch" in err


def test_report_of_a_real_run_in_chromium(trained, tmp_path):
    if browser.chromium_path() is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium): the report "
                    "page cannot be loaded in a real browser here")
    page = browser.load_page(pathlib.Path(trained) / "report.html",
                             screenshot=tmp_path / "report.png")
    assert page["exceptions"] == [] and page["console_errors"] == []
    assert page["failed_requests"] == []
    assert all(url.startswith(("file://", "data:")) for url in page["requests"])
    assert len(page["images"]) == 3 and all(image["naturalWidth"] > 0 for image in page["images"])
    rows = {int(row["epoch"]): row for row in helpers.read_metrics(trained)}
    cells = page["cells"]
    assert {int(cell["epoch"]) for cell in cells} == set(rows)
    for cell in cells:
        value = rows[int(cell["epoch"])][cell["column"]]
        assert float(cell["value"]) == value, cell
        kind = next((kind for kind in ("loss", "accuracy", "seconds", "learning_rate")
                     if cell["column"].endswith(kind)), None)
        shown = str(int(value)) if kind is None else report.format_number(kind, value)
        assert cell["text"] == shown, cell  # the epoch number, or the rounded value
    assert (tmp_path / "report.png").read_bytes().startswith(b"\x89PNG")


# ----------------------------------------------------------------------------------------
# predict
# ----------------------------------------------------------------------------------------


def _write_png(path, array, mode="L"):
    from PIL import Image

    Image.fromarray(np.asarray(array, dtype=np.uint8), mode=mode).save(path)
    return str(path)


def test_predict_classifies_good_files_and_reports_bad_ones(trained, tmp_path, capsys):
    digits, _ = helpers.synthetic_digits(2, seed=3)
    good = [_write_png(tmp_path / f"digit{index}.png", digit) for index, digit in enumerate(digits)]
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(pathlib.Path(good[0]).read_bytes()[:200])
    code, out, err = helpers.run_main(capsys, "predict", "--run-dir", trained, good[0], text,
                                      truncated, good[1], "--top-k", 3)
    assert code == 1
    assert err.splitlines() == [f"{text}: error: it is not an image Pillow can read (PNG or "
                                "JPEG expected)", f"{truncated}: error: it is truncated or corrupt"]
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == good
    for line in lines:
        guesses = line.split(": ", 1)[1].split(", ")
        assert len(guesses) == 3
    code, out, err = helpers.run_main(capsys, "predict", "--run-dir", trained, "--json", *good)
    assert code == 0 and err == ""
    document = json.loads(out)
    assert document["epoch"] == json.loads((pathlib.Path(trained) / "best" / "best.json").read_text())["epoch"]
    for entry in document["images"]:
        (guess,) = entry["predictions"]
        assert guess["class"] in [str(digit) for digit in range(10)] and 0 < guess["probability"] <= 1
    code, _, err = helpers.run_main(capsys, "predict", "--run-dir", tmp_path, good[0])
    assert code == 2 and "is not a run directory" in err and err.count("\n") == 1
    (tmp_path / "config.json").write_text("{}")  # a run whose first epoch never finished
    code, _, err = helpers.run_main(capsys, "predict", "--run-dir", tmp_path, good[0])
    assert code == 2 and "has no best model yet" in err and err.count("\n") == 1
    (tmp_path / "pictures").mkdir()
    code, _, err = helpers.run_main(capsys, "evaluate", "--run-dir", tmp_path / "pictures")
    assert code == 2 and "is not a run directory" in err and "--overwrite" not in err


def _mnist_test_split(folder, count):
    import dataset_utils

    raw = dataset_utils.load_idx_folder(folder)
    return raw.test_images[:count].reshape(count, 28, 28), raw.test_labels[:count]


def test_predict_reads_real_digits_in_every_form(real_mnist_dir, tmp_path, capsys):
    """A model trained for one epoch on real MNIST classifies test digits saved as they
    are, inverted (dark on light), enlarged onto a larger page, with transparency, and as
    JPEG; a text file and a truncated PNG each get one line and exit code 1."""
    from PIL import Image

    run_dir = tmp_path / "run"
    code, out, err = helpers.run_main(capsys, "--data-dir", real_mnist_dir, "--run-dir", run_dir,
                                      "--preset", "fast", "--epochs", 1, "--quiet")
    assert code == 0, err
    images, labels = _mnist_test_split(real_mnist_dir, 50)
    forms = {"as is": [], "inverted": [], "enlarged": [], "alpha": [], "jpeg": []}
    for index, digit in enumerate(images):
        stem = tmp_path / f"{index:02d}"
        forms["as is"].append(_write_png(f"{stem}-as-is.png", digit))
        forms["inverted"].append(_write_png(f"{stem}-inverted.png", 255 - digit))
        page = Image.new("L", (200, 170), 255)  # dark ink on white paper, four times larger
        page.paste(Image.fromarray(255 - digit).resize((112, 112), Image.BICUBIC), (50, 30))
        page.save(f"{stem}-enlarged.png")
        forms["enlarged"].append(f"{stem}-enlarged.png")
        rgba = np.zeros((28, 28, 4), np.uint8)  # black ink whose opacity is the digit
        rgba[..., 3] = digit
        forms["alpha"].append(_write_png(f"{stem}-alpha.png", rgba, mode="RGBA"))
        Image.fromarray(digit).save(f"{stem}.jpg", quality=90)
        forms["jpeg"].append(f"{stem}.jpg")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(pathlib.Path(forms["as is"][0]).read_bytes()[:150])
    paths = [path for form in forms.values() for path in form] + [str(text), str(truncated)]
    code, out, err = helpers.run_main(capsys, "predict", "--run-dir", run_dir, "--json", *paths)
    assert code == 1
    results = {entry["path"]: entry for entry in json.loads(out)["images"]}
    assert "error" in results[str(text)] and "error" in results[str(truncated)]
    predicted = {form: np.array([int(results[path]["predictions"][0]["class"]) for path in form_paths])
                 for form, form_paths in forms.items()}
    for form, values in predicted.items():
        # One epoch scores about 98% on the test split (benchmarks/RESULTS.md); 45 of 50
        # leaves room for a digit or two that the preparation shifts by a pixel.
        assert (values == labels).sum() >= 45, (form, values, labels)
    assert all(results[path]["inverted"] for path in forms["inverted"] + forms["enlarged"]
               + forms["alpha"])
    assert not any(results[path]["inverted"] for path in forms["as is"] + forms["jpeg"])
