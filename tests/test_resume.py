"""Exact resume: kills at random moments, damaged checkpoints, signals, determinism.

Runs are compared on every metrics.csv column except `seconds` (wall-clock time, which no
two runs share) and on the final weights, byte for byte.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import helpers
from helpers import MAIN, assert_same_run


def arguments(data_dir, run_dir, epochs=3, every=5):
    return ["--data-dir", data_dir, "--run-dir", run_dir, "--epochs", epochs,
            "--batch-size", 16, "--checkpoint-every-steps", every]


def run_to_end(args, **extra_env):
    result = helpers.run_main_process(args, **extra_env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def run_in_process(capsys, args):
    """The same command in this process (TensorFlow is already loaded: much faster)."""
    code, out, err = helpers.run_main(capsys, *args)
    assert code == 0, out + err
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return helpers.write_mnist_folder(tmp_path_factory.mktemp("idx"), train=600, test=100)


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """An uninterrupted 3-epoch run (34 steps per epoch, mid-epoch checkpoints every 5)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run_to_end(arguments(data_dir, run_dir))
    return run_dir


def test_two_uninterrupted_runs_are_identical(data_dir, reference, tmp_path, capsys):
    run_in_process(capsys, arguments(data_dir, tmp_path / "again"))
    assert_same_run(reference, tmp_path / "again")


def _kill_when(process, predicate, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False  # finished before the moment came
        if predicate():
            process.kill()
            process.wait()
            return True
        time.sleep(0.002)
    process.kill()
    raise AssertionError("the moment to kill never came")


def _seconds_after(first, delay):
    """A predicate that turns true `delay` seconds after `first()` was first seen true."""
    seen = []

    def predicate():
        if not seen and first():
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] >= delay
    return predicate


def _inode(path):
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def test_sigkill_at_random_moments_then_resume_is_bit_identical(data_dir, reference, tmp_path):
    """Kills: 3 at seeded random moments while training is under way, 1 inside a mid-epoch
    checkpoint write, 1 inside an epoch-folder write; then run to the end.

    A random moment is measured from the attempt's first mid-epoch checkpoint (tracing done,
    5 steps taken) and is at most 35 % of one reference epoch (its `seconds`: training,
    validation and test) later, so it may fall in a step, a checkpoint write, validation,
    test or plotting, and the three kills together leave at least an epoch for the other
    two on any machine (fixed delays in seconds did not: a fast machine finished the run
    before the last kill)."""
    run_dir = tmp_path / "run"
    checkpoint = run_dir / "in_progress.checkpoint"
    args = [sys.executable, MAIN, *map(str, arguments(data_dir, run_dir))]
    rng = np.random.default_rng(1234)
    # Epoch 1 also traces the steps; later epochs are the plain work.
    lines = (reference / "metrics.csv").read_text().splitlines()[2:]
    epoch_seconds = min(float(line.split(",")[-1]) for line in lines)
    plan = [("random", float(fraction) * epoch_seconds) for fraction in rng.uniform(0, 0.35, 3)]
    plan += [("in_progress_write", 0.0), ("epoch_write", 0.0)]
    killed_at = []
    for kind, delay in plan:
        pause = {"MNIST_TRAINER_WRITE_PAUSE": "0.2"} if kind != "random" else {}
        before = _inode(checkpoint)
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env=helpers.environment(**pause))
        if kind == "random":
            # Checkpoints are written to a new file and renamed over the old one: a new inode.
            under_way = lambda: _inode(checkpoint) not in (None, before)
            predicate = _seconds_after(under_way, delay)
        elif kind == "in_progress_write":
            predicate = lambda: run_dir.exists() and any(
                name.startswith("in_progress.checkpoint.tmp-") for name in os.listdir(run_dir))
        else:
            predicate = lambda: run_dir.exists() and any(
                name.endswith(".partial") for name in os.listdir(run_dir))
        if _kill_when(process, predicate):
            killed_at.append(kind)
    assert killed_at == [kind for kind, _ in plan], f"the run finished before some kills: {plan}"
    output = run_to_end(arguments(data_dir, run_dir))
    assert "Resuming after epoch" in output
    assert_same_run(reference, run_dir)
    leftovers = [name for name in os.listdir(run_dir) if ".tmp-" in name or "partial" in name]
    assert not leftovers


def test_sigterm_mid_epoch_checkpoints_and_resumes_at_the_next_step(data_dir, reference, tmp_path,
                                                                    capsys):
    run_dir = tmp_path / "run"
    process = helpers.start_main(arguments(data_dir, run_dir, every=0))
    # The program prints "Model:" once it handles SIGTERM itself; it then stops after the
    # step under way, here the first.
    for line in process.stdout:
        if line.startswith("Model:"):
            break
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "epoch 1 is checkpointed after step 1 of 34" in out and "Resume with: python" in out
    assert (run_dir / "in_progress.checkpoint").exists()
    # The checkpoint keeps the epoch's training time so far; a resumed epoch adds it to
    # its own. Set to 1000 s here, so that the sum cannot be mistaken for the resumed part.
    checkpoint = run_dir / "in_progress.checkpoint"
    contents = helpers.checkpoint_arrays(checkpoint)
    stopped_epoch = int(contents["state/epoch"])
    assert float(contents["state/seconds"]) > 0
    contents["state/seconds"] = np.array(1000.0)
    with open(checkpoint, "wb") as handle:
        np.savez(handle, **contents)
    output = run_in_process(capsys, arguments(data_dir, run_dir, every=0))
    assert "starting epoch 1 at step 2 of 34" in output
    assert not (run_dir / "in_progress.checkpoint").exists()
    assert_same_run(reference, run_dir)
    # The resumed epoch's time includes its training before the stop.
    rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    assert float(rows[stopped_epoch - 1].split(",")[-1]) > 1000.0


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(data_dir, reference, tmp_path,
                                                                   capsys, damage):
    # A copy of the finished reference run whose newest complete epoch is 2 (as if it had
    # been killed before publishing epoch 3), with epoch 2's checkpoint damaged.
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    shutil.rmtree(run_dir / "epoch_0003")
    (run_dir / "LATEST").write_text("epoch_0002\n")
    checkpoint = run_dir / "epoch_0002" / "checkpoint"
    data = bytearray(checkpoint.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        for offset in range(len(data) // 3, len(data) // 3 + 64):
            data[offset] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    code, output, warnings = helpers.run_main(capsys, *arguments(data_dir, run_dir))
    assert code == 0, output + warnings
    assert f"WARNING: skipping checkpoint {checkpoint}" in warnings
    assert "starting epoch 2" in output
    assert_same_run(reference, run_dir)
