"""The whole application on tiny data: layout, resume, extension, interruption, bad input."""

import contextlib
import hashlib
import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

import helpers
import main
from conftest import REPO_ROOT

EPOCH_FILES = {"checkpoint", "confusion_matrix.png", "losses_accs.png", "metrics.json"}
COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
           "test_loss", "test_accuracy", "seconds"]


def run_main(capsys, *arguments):
    """Run main.main in this process; returns (exit code, stdout, stderr)."""
    code = main.main([str(argument) for argument in arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tree_digest(path):
    """{relative path: sha256} of every file under `path`."""
    digests = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = pathlib.Path(root, name)
            digests[str(full.relative_to(path))] = hashlib.sha256(full.read_bytes()).hexdigest()
    return digests


def read_metrics(run_dir):
    lines = (pathlib.Path(run_dir) / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",") == COLUMNS
    return [dict(zip(COLUMNS, map(float, line.split(",")))) for line in lines[1:]]


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
        ["config.json", "metrics.csv", "test_result.txt", "LATEST", "epoch_0001", "epoch_0002"])
    for epoch in (1, 2):
        assert set(os.listdir(run_dir / f"epoch_{epoch:04d}")) == EPOCH_FILES
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
    assert "test_result" not in out and "test" in (run_dir / "test_result.txt").read_text()


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


def test_overwrite_starts_over_but_keeps_foreign_files(two_epoch_run, tiny_dir, capsys):
    run_dir, _ = two_epoch_run
    (run_dir / "my_notes.txt").write_text("keep me")
    (run_dir / ".epoch_backup").mkdir()  # names close to the program's own stay too
    (run_dir / ".epoch_notes").write_text("keep me too")
    code, out, err = run_main(capsys, "--data-dir", tiny_dir, "--run-dir", run_dir,
                              "--epochs", 1, "--batch-size", 64, "--overwrite")
    assert code == 0, err
    assert "Resuming" not in out
    assert "removed the earlier run's 2 epoch folders and 3 other files" in out
    assert sorted(os.listdir(run_dir)) == sorted(
        ["config.json", "metrics.csv", "test_result.txt", "LATEST", "epoch_0001", "my_notes.txt",
         ".epoch_backup", ".epoch_notes"])
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


def test_a_failed_start_leaves_no_empty_run_directory(tmp_path, capsys):
    (tmp_path / "no_data").mkdir()
    code, _, err = run_main(capsys, "--data-dir", tmp_path / "no_data",
                            "--run-dir", tmp_path / "runs" / "new", "--epochs", 1)
    assert code == 2 and "is empty" in err
    assert sorted(os.listdir(tmp_path)) == ["no_data"]


def test_a_full_disk_ends_in_one_line_and_the_run_resumes(two_epoch_run, tiny_dir, capsys,
                                                          monkeypatch):
    import cp_utils

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
    assert out.count("WARNING: skipping checkpoint") == 2
    assert "none of its 2 checkpoints can be read" in err and len(err.strip().splitlines()) == 1
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
        (["--epochs", "0"], "--epochs"),
        (["--epochs", "three"], "--epochs"),
        (["--batch-size", "-4"], "--batch-size"),
        (["--learning-rate", "0"], "--learning-rate"),
        (["--learning-rate", "fast"], "--learning-rate"),
        (["--validation-fraction", "1.5"], "--validation-fraction"),
        (["--validation-fraction", "0"], "--validation-fraction"),
        (["--dataset", "cifar10"], "--dataset"),
    ],
)
def test_bad_flags_exit_2_with_one_line(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(arguments)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


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
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "code" / "main.py"), "--epochs", "-1"],
        capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "main.py: error: argument --epochs: expected a positive integer, got '-1'. See --help."]


# ----------------------------------------------------------------------------------------
# Real processes: signals and a crash
# ----------------------------------------------------------------------------------------


def start(arguments, **kwargs):
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "code" / "main.py"), *map(str, arguments)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def wait_for(predicate, process, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise AssertionError(f"process ended early: {process.communicate()}")
        time.sleep(0.02)
    process.kill()
    raise AssertionError("timed out")


def test_sigkill_after_epoch_one_resumes_at_epoch_two(tmp_path):
    data_dir = helpers.write_mnist_folder(tmp_path / "idx", train=1200, test=100)
    run_dir = tmp_path / "run"
    arguments = ["--data-dir", data_dir, "--run-dir", run_dir, "--epochs", 3, "--batch-size", 32]
    process = start(arguments)
    wait_for(lambda: (run_dir / "LATEST").exists(), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    completed = int((run_dir / "LATEST").read_text().strip()[len("epoch_"):])
    assert completed < 3, "the run finished before it could be killed"
    kept = {epoch: tree_digest(run_dir / f"epoch_{epoch:04d}") for epoch in range(1, completed + 1)}

    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "code" / "main.py"), *map(str, arguments)],
        capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
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
    process = start(["--data-dir", data_dir, "--run-dir", run_dir, "--epochs", 50,
                     "--batch-size", 16, "--overwrite"])
    wait_for(lambda: (run_dir / "LATEST").exists(), process)
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
        with np.load(pathlib.Path(run_dir) / "epoch_0002" / "checkpoint") as archive:
            assert any(key.startswith("average/") for key in archive.files) == has_average
