"""The whole application on tiny data: layout, resume, extension, interruption, bad input."""

import contextlib
import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

import basic_utils
import cp_utils
import helpers
import main
import train_state
import train_validation_test
from helpers import read_metrics, run_main, tree_digest

EPOCH_FILES = {"checkpoint", "confusion_matrix.png", "losses_accs.png", "misclassified.png",
               "metrics.json"}


def exit_code(arguments):
    """main.main's exit code for `arguments`, whether it returns it or argparse exits."""
    try:
        return main.main([str(argument) for argument in arguments])
    except SystemExit as exit_info:
        return exit_info.code


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return helpers.write_mnist_folder(tmp_path_factory.mktemp("idx"), train=300, test=100)


@pytest.fixture(scope="module")
def finished_two_epoch_run(tiny_dir, tmp_path_factory):
    """One 2-epoch run per module; tests get their own copy of it."""
    run_dir = tmp_path_factory.mktemp("base") / "run"
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = main.main(["--data-dir", tiny_dir, "--run-dir", str(run_dir), "--epochs", "2",
                          "--batch-size", "16"])
    assert code == 0, output.getvalue()
    return run_dir, output.getvalue()


@pytest.fixture
def two_epoch_run(finished_two_epoch_run, tmp_path):
    base, output = finished_two_epoch_run
    run_dir = tmp_path / "run"
    shutil.copytree(base, run_dir)
    return run_dir, output


def test_two_epochs_write_exactly_the_documented_layout(two_epoch_run):
    run_dir, out = two_epoch_run
    assert sorted(os.listdir(run_dir)) == sorted(
        ["config.json", "metrics.csv", "test_result.txt", "LATEST", "epoch_0001", "epoch_0002",
         "report.html", "tensorboard", "best"])
    for epoch in (1, 2):
        assert set(os.listdir(run_dir / f"epoch_{epoch:04d}")) == EPOCH_FILES
    assert sorted(os.listdir(run_dir / "tensorboard")) == [
        "events.out.tfevents.epoch_0001.mnist-trainer",
        "events.out.tfevents.epoch_0002.mnist-trainer"]
    assert sorted(os.listdir(run_dir / "best")) == ["best.json", "model.keras", "saved_model"]
    assert (run_dir / "LATEST").read_text().strip() == "epoch_0002"
    rows = read_metrics(run_dir)
    assert [row["epoch"] for row in rows] == [1, 2]
    for row in rows:
        for split in ("train", "val", "test"):
            assert 0.0 <= row[f"{split}_accuracy"] <= 1.0
    # The synthetic classes are learnable: training loss falls and validation beats chance.
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    assert rows[1]["val_accuracy"] > 0.3
    config = json.loads((run_dir / "config.json").read_text())
    assert config["epochs"] == 2 and config["batch_size"] == 16 and config["seed"] == 0
    assert config["data_source"] == "idx" and len(config["data_fingerprint"]) == 64
    assert "tensorflow" in config["versions"] and "keras" in config["versions"]
    # The kernels the run used (conftest.py sets the default main.py sets: oneDNN on).
    assert config["versions"]["TF_ENABLE_ONEDNN_OPTS"] == os.environ["TF_ENABLE_ONEDNN_OPTS"]
    epoch_metrics = json.loads((run_dir / "epoch_0002" / "metrics.json").read_text())
    matrix = epoch_metrics["val_confusion_matrix"]
    assert len(matrix) == 10 and all(len(row) == 10 for row in matrix)
    assert sum(map(sum, matrix)) == config["num_validation"]
    assert epoch_metrics["val_accuracy"] == rows[1]["val_accuracy"]
    assert "Epoch 2/2" in out and "parameters" in out
    # test_result.txt shows every epoch's test numbers and names the best validation epoch.
    lines = (run_dir / "test_result.txt").read_text().splitlines()
    table = [line.split() for line in lines if line.strip()[:1].isdigit()]
    assert [(int(cells[0]), cells[1], cells[2]) for cells in table] == [
        (int(row["epoch"]), f"{row['test_loss']:.4f}", f"{100 * row['test_accuracy']:.2f}%")
        for row in rows]
    best = cp_utils.best_row(rows)
    assert lines[-1].startswith(f"Best validation accuracy: epoch {int(best['epoch'])} ")
    assert json.loads((run_dir / "best" / "best.json").read_text())["epoch"] == best["epoch"]


def test_rerun_with_more_epochs_trains_only_the_new_epoch(two_epoch_run, tiny_dir, capsys):
    run_dir, _ = two_epoch_run
    before = {name: tree_digest(run_dir / name) for name in ("epoch_0001", "epoch_0002")}
    rows_before = read_metrics(run_dir)
    # As if epochs 1-2 had been trained with the other CPU kernels: the rerun says so.
    config_path = run_dir / "config.json"
    saved = json.loads(config_path.read_text())
    kernels = saved["versions"]["TF_ENABLE_ONEDNN_OPTS"]
    saved["versions"]["TF_ENABLE_ONEDNN_OPTS"] = "other"
    config_path.write_text(json.dumps(saved))
    code, out, err = run_main(capsys, "--data-dir", tiny_dir, "--run-dir", run_dir,
                              "--epochs", 3, "--batch-size", 16)
    assert code == 0, err
    assert "Note: this run continues with other libraries or kernels" in out
    assert f"TF_ENABLE_ONEDNN_OPTS other -> {kernels}" in out
    assert "Resuming after epoch 2" in out
    assert ("Changing the run from 2 to 3 epochs (the one-cycle learning rate is re-planned "
            "over the new length; its last 2 epochs without augmentation move to the new "
            "end).") in out
    assert "Epoch 3/3" in out and "Epoch 1/3" not in out and "Epoch 2/3" not in out
    for name, digest in before.items():
        assert tree_digest(run_dir / name) == digest, f"{name} was rewritten"
    rows = read_metrics(run_dir)
    assert len(rows) == 3
    assert rows[:2] == rows_before
    assert (run_dir / "LATEST").read_text().strip() == "epoch_0003"
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == 3


def test_rerunning_a_finished_run_changes_nothing(two_epoch_run, tiny_dir, capsys):
    run_dir, _ = two_epoch_run
    before = tree_digest(run_dir)
    code, out, _ = run_main(capsys, "--data-dir", tiny_dir, "--run-dir", run_dir,
                            "--epochs", 2, "--batch-size", 16)
    assert code == 0
    assert "Run is complete (2 of 2 epochs done)" in out
    code, out, _ = run_main(capsys, "--data-dir", tiny_dir, "--run-dir", run_dir,
                            "--epochs", 1, "--batch-size", 16)
    assert code == 0
    assert "it holds 2 epochs, more than the 1 asked for" in out
    assert tree_digest(run_dir) == before


def test_changed_settings_are_refused_and_listed(two_epoch_run, tiny_dir, capsys):
    run_dir, _ = two_epoch_run
    before = tree_digest(run_dir)
    code, _, err = run_main(capsys, "--data-dir", tiny_dir, "--run-dir", run_dir,
                            "--epochs", 3, "--batch-size", 64, "--seed", 5)
    assert code == 2
    assert "batch_size: 16 -> 64" in err and "seed: 0 -> 5" in err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert tree_digest(run_dir) == before


def test_a_finished_run_with_other_settings_or_data_is_refused_not_complete(
        two_epoch_run, tiny_dir, tmp_path, capsys):
    run_dir, _ = two_epoch_run
    before = tree_digest(run_dir)
    other = helpers.write_mnist_folder(tmp_path / "other", train=300, test=100, seed=7)
    for arguments in (["--data-dir", other, "--batch-size", 16],
                      ["--data-dir", tiny_dir, "--batch-size", 16, "--preset", "fast"]):
        code, out, err = run_main(capsys, *arguments, "--run-dir", run_dir, "--epochs", 2)
        assert code == 2 and "complete" not in out, out
        assert "was made with other settings" in err and len(err.strip().splitlines()) == 1
    assert tree_digest(run_dir) == before


def test_the_default_run_directory_tells_recipes_and_data_apart(tiny_dir, tmp_path, capsys,
                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    for arguments in (["--data-dir", tiny_dir], ["--data-dir", tiny_dir, "--preset", "fast"]):
        code, out, err = run_main(capsys, *arguments, "--epochs", 1, "--batch-size", 16)
        assert code == 0, out + err
    with tfds.testing.mock_data(num_examples=120):
        code, out, err = run_main(capsys, "--epochs", 1, "--batch-size", 16)
    assert code == 0, out + err
    assert sorted(os.listdir(tmp_path / "runs")) == [
        "mnist-fast-idx", "mnist-standard-idx", "mnist-standard-tfds"]
    assert f"Run directory: {tmp_path / 'runs' / 'mnist-standard-tfds'}" in out


def test_a_batch_larger_than_the_training_split_is_refused(tiny_dir, tmp_path, capsys):
    code, out, err = run_main(capsys, "--data-dir", tiny_dir, "--run-dir", tmp_path / "run",
                              "--batch-size", 100000000)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--batch-size 100000000 is larger than the training split (270 images" in err
    assert not (tmp_path / "run").exists()


def test_divergence_stops_the_run_and_publishes_nothing(tiny_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out, err = run_main(capsys, "--data-dir", tiny_dir, "--run-dir", run_dir,
                              "--epochs", 2, "--batch-size", 16, "--optimizer", "sgd",
                              "--schedule", "constant", "--learning-rate", "1e30")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "training diverged in epoch 1 at step 2 of 17: its training loss was" in err
    assert f"{run_dir} holds no checkpoint of this run yet" in err
    assert "Lower --learning-rate (it is 1e+30)" in err
    assert "Epoch 1/2" not in out
    assert sorted(os.listdir(run_dir)) == ["config.json"]


def test_divergence_keeps_the_last_good_epoch(two_epoch_run, tiny_dir, capsys, monkeypatch):
    run_dir, _ = two_epoch_run
    epochs = {name: tree_digest(run_dir / name) for name in ("epoch_0001", "epoch_0002")}
    metrics = (run_dir / "metrics.csv").read_text()
    # As if the loss of epoch 3's first step were far above guessing.
    monkeypatch.setattr(train_validation_test, "DIVERGED_FACTOR", 1e-6)
    code, out, err = run_main(capsys, "--data-dir", tiny_dir, "--run-dir", run_dir,
                              "--epochs", 3, "--batch-size", 16)
    assert code == 2 and "training diverged in epoch 3 at step 1 of 17" in err
    assert f"epoch 2 ({run_dir / 'epoch_0002'}) stays the newest state" in err
    assert (run_dir / "LATEST").read_text().strip() == "epoch_0002"
    assert {name: tree_digest(run_dir / name) for name in epochs} == epochs
    assert (run_dir / "metrics.csv").read_text() == metrics
    assert not (run_dir / "epoch_0003").exists()
    assert not (run_dir / "in_progress.checkpoint").exists()


def test_weights_that_are_not_finite_are_never_saved(capsys):
    config = main.parse_config(["--preset", "fast", "--precision", "float32"])
    state = train_state.create_train_state(config, 10, steps_per_epoch=5)
    state.check_finite()
    kernel = state.model.trainable_variables[0]
    kernel.assign(np.full(kernel.shape, np.nan, "float32"))
    with pytest.raises(basic_utils.Diverged, match="stem_conv/kernel holds NaN"):
        state.check_finite()


def test_overwrite_starts_over_but_keeps_foreign_files(two_epoch_run, tiny_dir, capsys):
    run_dir, _ = two_epoch_run
    (run_dir / "my_notes.txt").write_text("keep me")
    (run_dir / ".epoch_backup").mkdir()  # names close to the program's own stay too
    (run_dir / ".epoch_notes").write_text("keep me too")
    code, out, err = run_main(capsys, "--data-dir", tiny_dir, "--run-dir", run_dir,
                              "--epochs", 1, "--batch-size", 64, "--overwrite")
    assert code == 0, err
    assert "Resuming" not in out
    assert ("removed the earlier run's 2 epoch folders and LATEST, best/, metrics.csv, "
            "report.html, tensorboard/, test_result.txt from") in out
    assert sorted(os.listdir(run_dir)) == sorted(
        ["config.json", "metrics.csv", "test_result.txt", "LATEST", "epoch_0001", "my_notes.txt",
         ".epoch_backup", ".epoch_notes", "report.html", "tensorboard", "best"])
    assert len(read_metrics(run_dir)) == 1


def test_overwrite_removes_nothing_when_the_start_fails(two_epoch_run, tmp_path, capsys):
    run_dir, _ = two_epoch_run
    (tmp_path / "no_data").mkdir()
    before = tree_digest(run_dir)
    code, out, err = run_main(capsys, "--data-dir", tmp_path / "no_data", "--run-dir", run_dir,
                              "--epochs", 1, "--overwrite")
    assert code == 2 and "is empty" in err and len(err.strip().splitlines()) == 1
    assert tree_digest(run_dir) == before


def test_a_deleted_latest_is_refused_but_the_crash_state_resumes(two_epoch_run, tiny_dir,
                                                                   capsys):
    run_dir, _ = two_epoch_run
    rows = read_metrics(run_dir)
    os.remove(run_dir / "LATEST")
    before = tree_digest(run_dir)
    code, _, err = run_main(capsys, "--data-dir", tiny_dir, "--run-dir", run_dir,
                            "--epochs", 3, "--batch-size", 16)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "starting over would overwrite them" in err and "epoch_0002" in err
    assert tree_digest(run_dir) == before
    # What a crash between publishing epoch 2's folder and moving LATEST leaves: epoch 2
    # is redone, with the same numbers.
    (run_dir / "LATEST").write_text("epoch_0001\n")
    code, out, err = run_main(capsys, "--data-dir", tiny_dir, "--run-dir", run_dir,
                              "--epochs", 2, "--batch-size", 16)
    assert code == 0, err
    assert "Resuming after epoch 1" in out
    drop_seconds = [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
    assert [{k: v for k, v in row.items() if k != "seconds"}
            for row in read_metrics(run_dir)] == drop_seconds


def test_a_folder_that_is_not_a_run_is_refused(tiny_dir, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    (folder / "metrics.csv").write_text("my own metrics")
    (folder / "config.json").write_text('{"my": "settings"}')  # not one this program wrote
    before = tree_digest(folder)
    for extra in ([], ["--overwrite"]):
        code, _, err = run_main(capsys, "--data-dir", tiny_dir, "--run-dir", folder,
                                "--epochs", 1, *extra)
        assert code == 2 and "holds no run of this program" in err, err
        assert "config.json, metrics.csv, notes.txt" in err
        assert len(err.strip().splitlines()) == 1
        assert tree_digest(folder) == before


def test_a_failed_start_leaves_no_empty_run_directory(tiny_dir, tmp_path, capsys,
                                                      monkeypatch):
    def full_disk(path, data):
        raise OSError(28, "No space left on device")

    # The disk fills up before config.json, the first file of a new run, is written.
    monkeypatch.setattr(cp_utils, "write_bytes_durably", full_disk)
    code, _, err = run_main(capsys, "--data-dir", tiny_dir, "--run-dir",
                            tmp_path / "runs" / "new", "--epochs", 1)
    assert code == 2 and "No space left on device" in err
    assert os.listdir(tmp_path) == []


def test_a_first_epoch_folder_without_latest_is_redone_and_said_so(two_epoch_run, tiny_dir,
                                                                   capsys):
    run_dir, _ = two_epoch_run
    rows = read_metrics(run_dir)
    # What a crash between publishing epoch 1's folder and writing LATEST leaves (here with
    # a metrics.csv that epoch 1's publication rewrites).
    shutil.rmtree(run_dir / "epoch_0002")
    os.remove(run_dir / "LATEST")
    code, out, err = run_main(capsys, "--data-dir", tiny_dir, "--run-dir", run_dir,
                              "--epochs", 2, "--batch-size", 16)
    assert code == 0, err
    assert f"Note: {run_dir / 'epoch_0001'} is not named by LATEST" in out
    assert "Epoch 1/2" in out and "Resuming" not in out
    without_seconds = [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
    assert [{k: v for k, v in row.items() if k != "seconds"}
            for row in read_metrics(run_dir)] == without_seconds


def test_a_signal_in_an_epochs_last_step_lets_the_epoch_be_published(tiny_dir, tmp_path,
                                                                      capsys, monkeypatch):
    class SignalledAtOnce(basic_utils.StopSignal):
        """As if Ctrl-C came during the first step."""

        def __init__(self):
            super().__init__()
            self.received = signal.SIGINT

    monkeypatch.setattr(basic_utils, "StopSignal", SignalledAtOnce)
    run_dir = tmp_path / "run"
    # All 270 training images in one batch: each epoch's first step is its last.
    code, out, err = run_main(capsys, "--data-dir", tiny_dir, "--run-dir", run_dir,
                              "--epochs", 2, "--batch-size", 270)
    assert code == 130, out + err
    assert "Epoch 1/2" in out and "Completed epochs are saved (1 of 2)." in out
    assert (run_dir / "LATEST").read_text().strip() == "epoch_0001"
    assert not (run_dir / "in_progress.checkpoint").exists()


def test_a_full_disk_ends_in_one_line_and_the_run_resumes(two_epoch_run, tiny_dir, capsys,
                                                          monkeypatch):
    # Started over with --overwrite, so the command to resume must not repeat it.
    run_dir, _ = two_epoch_run
    real_write = cp_utils.write_bytes_durably

    def full_disk(path, data):
        if "epoch_0002" in str(path):
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(cp_utils, "write_bytes_durably", full_disk)
    arguments = ["--data-dir", tiny_dir, "--run-dir", run_dir, "--epochs", 2,
                 "--batch-size", 32]
    code, _, err = run_main(capsys, *arguments, "--overwrite")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "No space left on device" in err and "resume with: python" in err
    assert "--overwrite" not in err and "--batch-size 32" in err
    assert (run_dir / "LATEST").read_text().strip() == "epoch_0001"
    published = tree_digest(run_dir / "epoch_0001")
    monkeypatch.setattr(cp_utils, "write_bytes_durably", real_write)
    code, out, err = run_main(capsys, *arguments)
    assert code == 0, err
    assert "Resuming after epoch 1" in out
    assert tree_digest(run_dir / "epoch_0001") == published
    assert (run_dir / "LATEST").read_text().strip() == "epoch_0002"
    assert not any(name.endswith(".partial") for name in os.listdir(run_dir))


def test_other_data_is_refused_naming_both_datasets(two_epoch_run, tmp_path, capsys):
    run_dir, _ = two_epoch_run
    other = helpers.write_mnist_folder(tmp_path / "other", train=300, test=100, seed=7)
    code, _, err = run_main(capsys, "--data-dir", other, "--run-dir", run_dir,
                            "--epochs", 3, "--batch-size", 16)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"IDX files in {other}" in err and "300 training and 100 test images" in err


def test_no_readable_checkpoint_stops_instead_of_starting_over(two_epoch_run, tiny_dir,
                                                               capsys):
    run_dir, _ = two_epoch_run
    for epoch in (1, 2):
        (run_dir / f"epoch_000{epoch}" / "checkpoint").write_bytes(b"not a checkpoint")
    before = tree_digest(run_dir)
    code, out, err = run_main(capsys, "--data-dir", tiny_dir, "--run-dir", run_dir,
                              "--epochs", 3, "--batch-size", 16)
    assert code == 2
    warnings, error = err.strip().splitlines()[:-1], err.strip().splitlines()[-1]
    assert len(warnings) == 2 and all(line.startswith("WARNING: skipping checkpoint")
                                      and line.endswith("it is not a checkpoint archive "
                                                        "(damaged or replaced)")
                                      for line in warnings)
    assert error.startswith("main.py: error:") and "none of its 2 checkpoints can be read" in error
    assert tree_digest(run_dir) == before


def test_half_written_epoch_folder_is_never_resumed_from(two_epoch_run, tiny_dir, capsys):
    run_dir, _ = two_epoch_run
    # What a crash while saving epoch 3 leaves: a partial folder, LATEST still at epoch 2.
    partial = run_dir / ".epoch_0003.partial"
    partial.mkdir()
    (partial / "checkpoint").write_bytes(b"half a checkpoint")
    code, out, err = run_main(capsys, "--data-dir", tiny_dir, "--run-dir", run_dir,
                              "--epochs", 3, "--batch-size", 16)
    assert code == 0, err
    assert "Resuming after epoch 2" in out and ".epoch_0003.partial" in out
    assert "Note: this run continues" not in out  # same libraries and kernels: no note
    assert not partial.exists()
    assert set(os.listdir(run_dir / "epoch_0003")) == EPOCH_FILES


def test_default_command_uses_tensorflow_datasets(tmp_path, capsys):
    with tfds.testing.mock_data(num_examples=120):
        code, out, err = run_main(capsys, "--run-dir", tmp_path / "run", "--epochs", 1,
                                  "--batch-size", 16)
    assert code == 0, err
    assert "tensorflow-datasets 'mnist'" in out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data_source"] == "tfds:mnist"
    assert config["num_train"] + config["num_validation"] == 120


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--epochs", "0"], "--epochs must be a positive integer, got 0"),
        (["--epochs", "three"], "--epochs: expected an integer, got 'three'"),
        (["--batch-size", "-4"], "--batch-size must be a positive integer, got -4"),
        (["--learning-rate", "0"], "--learning-rate must be a positive number, got 0.0"),
        (["--learning-rate", "nan"], "--learning-rate must be a positive number, got nan"),
        (["--learning-rate", "fast"], "--learning-rate: expected a number, got 'fast'"),
        (["--validation-fraction", "1.5"], "--validation-fraction must be a number between"),
        (["--validation-fraction", "0"], "--validation-fraction must be a number between"),
        (["--weight-average", "1"], "--weight-average must be a number from 0"),
        (["--clean-epochs", "-1"], "--clean-epochs must be an integer of at least 0"),
        (["--dataset", "cifar10"], "unknown --dataset 'cifar10'; choose one of mnist"),
        (["--model", "resnet"], "unknown --model 'resnet'; choose one of convnet"),
        (["--preset", "fastest"], "unknown --preset 'fastest'; choose one of standard"),
        (["--xla"], "--xla needs --no-determinism"),
        (["--seed", "4294967296"], "--seed must be an integer from 0 to 4294967295, got"),
        (["--data-dir", ""], "--data-dir is empty; pass a folder"),
    ],
)
def test_bad_flags_exit_2_with_one_line(arguments, message, capsys):
    assert exit_code(arguments) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and message in captured.err


def test_bad_data_and_run_directories_exit_2(tmp_path, tiny_mnist_dir, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in os.listdir(tiny_mnist_dir):
        (broken / name).write_bytes(pathlib.Path(tiny_mnist_dir, name).read_bytes())
    os.remove(broken / "train-labels-idx1-ubyte.gz")
    run = tmp_path / "run"
    cases = [
        (["--data-dir", tmp_path / "missing", "--run-dir", run], "does not exist"),
        (["--data-dir", tmp_path / "empty", "--run-dir", run], "is empty"),
        (["--data-dir", broken, "--run-dir", run], "train-labels-idx1-ubyte"),
        (["--data-dir", tiny_mnist_dir, "--run-dir", tmp_path / "a_file"], "is a file"),
        (["--data-dir", tiny_mnist_dir, "--run-dir", tmp_path / "a_file" / "run"], "cannot write"),
        (["--data-dir", tiny_mnist_dir, "--run-dir", "/proc/mnist-run"], "cannot write"),
    ]
    for arguments, message in cases:
        code, _, err = run_main(capsys, *arguments, "--epochs", 1)
        assert code == 2, (arguments, err)
        assert len(err.strip().splitlines()) == 1 and message in err, err
    assert (tmp_path / "a_file").read_text() == "not a folder"


def test_bad_flag_in_a_real_process_prints_no_traceback():
    result = helpers.run_main_process(["--epochs", "-1"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "main.py: error: --epochs must be a positive integer, got -1."]


def test_a_wrong_data_dir_is_reported_before_tensorflow_loads(tiny_mnist_dir, tmp_path):
    parent = pathlib.Path(tiny_mnist_dir).parent  # holds the IDX folder, not the files
    code = (f"import sys; sys.path.insert(0, {str(helpers.REPO_ROOT / 'code')!r}); "
            "import main; code = main.main(sys.argv[1:]); "
            "print(code, 'tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, "--data-dir", str(parent),
                             "--run-dir", str(tmp_path / "run")],
                            capture_output=True, text=True, env=helpers.environment())
    assert result.stdout.split() == ["2", "False"], result.stderr
    assert result.stderr.strip().splitlines() == [
        f"main.py: error: --data-dir {parent} holds no IDX files itself, but its subfolder "
        f"{tiny_mnist_dir} has all four; pass --data-dir {tiny_mnist_dir}."]


# ----------------------------------------------------------------------------------------
# Real processes: signals and a crash
# ----------------------------------------------------------------------------------------


def test_sigkill_after_epoch_one_resumes_at_epoch_two(tmp_path):
    data_dir = helpers.write_mnist_folder(tmp_path / "idx", train=1200, test=100)
    run_dir = tmp_path / "run"
    arguments = ["--data-dir", data_dir, "--run-dir", run_dir, "--epochs", 3, "--batch-size", 32]
    process = helpers.start_main(arguments)
    helpers.wait_for(lambda: (run_dir / "LATEST").exists(), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    completed = int((run_dir / "LATEST").read_text().strip()[len("epoch_"):])
    assert completed < 3, "the run finished before it could be killed"
    kept = {epoch: tree_digest(run_dir / f"epoch_{epoch:04d}") for epoch in range(1, completed + 1)}

    result = helpers.run_main_process(arguments)
    assert result.returncode == 0, result.stderr
    assert f"starting epoch {completed + 1}" in result.stdout
    assert f"Epoch {completed}/3" not in result.stdout
    assert len(read_metrics(run_dir)) == 3
    for epoch, digest in kept.items():
        assert tree_digest(run_dir / f"epoch_{epoch:04d}") == digest
    assert not [name for name in os.listdir(run_dir) if name.startswith(".")]


def test_ctrl_c_stops_cleanly_and_prints_the_resume_command(tmp_path):
    data_dir = helpers.write_mnist_folder(tmp_path / "idx", train=4000, test=200)
    run_dir = tmp_path / "run"
    process = helpers.start_main(["--data-dir", data_dir, "--run-dir", run_dir, "--epochs", 50,
                                  "--batch-size", 16, "--overwrite"])
    helpers.wait_for(lambda: (run_dir / "LATEST").exists(), process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert "Resume with: python" in out and "--overwrite" not in out.split("Resume with:")[1]
    assert f"--run-dir {run_dir}" in out
    assert (run_dir / "LATEST").exists()


def test_weight_average_changes_evaluation_not_training(finished_two_epoch_run, tiny_dir,
                                                        tmp_path, capsys):
    """The same run without the average trains identically; only validation and test,
    which use the averaged weights, differ. Its checkpoints hold no averaged weights."""
    averaged_dir, _ = finished_two_epoch_run
    code, out, err = run_main(capsys, "--data-dir", tiny_dir, "--run-dir", tmp_path / "raw",
                              "--epochs", 2, "--batch-size", 16, "--weight-average", 0)
    assert code == 0, out + err
    assert "no weight average" in out
    averaged, raw = read_metrics(averaged_dir), read_metrics(tmp_path / "raw")
    for row_a, row_r in zip(averaged, raw):
        assert (row_a["train_loss"], row_a["train_accuracy"]) == (row_r["train_loss"],
                                                                  row_r["train_accuracy"])
    assert [row["val_loss"] for row in averaged] != [row["val_loss"] for row in raw]
    for run_dir, has_average in ((averaged_dir, True), (tmp_path / "raw", False)):
        arrays = helpers.checkpoint_arrays(pathlib.Path(run_dir) / "epoch_0002" / "checkpoint")
        assert any(key.startswith("average/") for key in arrays) == has_average
