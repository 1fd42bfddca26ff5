"""Progress output: a bar on a terminal, plain heartbeat lines elsewhere, nothing with --quiet,
and the same training results whichever is shown."""

import io
import os
import pty
import struct
import subprocess
import sys
import termios

import fcntl
import numpy as np
import pytest

import helpers
import progress
from helpers import MAIN, assert_same_run


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _sums(step, batch=128, loss=0.5, accuracy=0.9):
    return np.array([loss * step * batch, accuracy * step * batch, step * batch], float)


def test_heartbeat_lines_come_once_per_interval_and_hold_no_control_characters():
    clock, stream = FakeClock(), io.StringIO()
    shown = progress.EpochProgress("heartbeat", 2, 5, steps=400, done=100, batch_size=128,
                                   later_epochs=3, overhead_seconds=10.0, stream=stream,
                                   clock=clock)
    for step in range(101, 401):
        clock.now += 1.0  # one second per step: 300 s in all
        shown.after_step(step, _sums(step))
    shown.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 300 // progress.HEARTBEAT_SECONDS
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()
    first = lines[0]
    # After 60 steps of 128 images in 60 s: 128 img/s, 240 steps left = 4:00 in the epoch;
    # the run adds 10 s of evaluation now and 3 later epochs of 400 s + 10 s each.
    assert first.strip().startswith("epoch 2/5: step 160/400")
    assert "128 img/s" in first and "loss 0.5000" in first and "accuracy 90.00%" in first
    assert "4:00 left in the epoch" in first and f"{_clock(240 + 10 + 3 * 410)} in the run" in first


def _clock(seconds):
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def test_the_bar_redraws_a_few_times_a_second_at_most():
    clock, stream = FakeClock(), io.StringIO()
    shown = progress.EpochProgress("bar", 1, 1, steps=1000, done=0, batch_size=32,
                                   stream=stream, clock=clock)
    for step in range(1, 1001):
        clock.now += 0.01  # 100 steps a second for 10 s
        shown.after_step(step, _sums(step, 32))
    shown.close()
    draws = stream.getvalue().count("\r")
    # One draw when the bar appears, at most one per REFRESH_SECONDS, one to clear it.
    assert 10 / progress.REFRESH_SECONDS - 1 <= draws - 2 <= 10 / progress.REFRESH_SECONDS + 1
    assert "img/s" in stream.getvalue() and "acc 90.00%" in stream.getvalue()


def test_quiet_shows_nothing_and_the_mode_follows_the_terminal():
    stream = io.StringIO()
    shown = progress.EpochProgress("quiet", 1, 1, steps=10, done=0, batch_size=1, stream=stream)
    for step in range(1, 11):
        shown.after_step(step, _sums(step, 1))
    assert stream.getvalue() == ""
    assert progress.choose_mode(quiet=True, stream=sys.stderr) == "quiet"
    assert progress.choose_mode(quiet=False, stream=io.StringIO()) == "heartbeat"
    with pytest.raises(ValueError, match="mode"):
        progress.EpochProgress("loud", 1, 1, steps=1, done=0, batch_size=1)


def _run_under_terminal(arguments, timeout=300):
    """Run main.py with stdout and stderr on a pseudo-terminal of 120 x 40 characters;
    returns (exit code, everything it wrote)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen([sys.executable, MAIN, *map(str, arguments)],
                               stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
                               env=helpers.environment(), close_fds=True)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closes when the process ends
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    return process.wait(timeout=timeout), output.decode("utf-8", "replace")


def test_bar_on_a_terminal_plain_lines_when_redirected_and_the_same_results(tmp_path):
    data_dir = helpers.write_mnist_folder(tmp_path / "idx", train=600, test=100)

    def arguments(name):
        return ["--data-dir", data_dir, "--run-dir", tmp_path / name, "--preset", "fast",
                "--epochs", 2, "--batch-size", 16, "--checkpoint-every-steps", 5]

    code, terminal = _run_under_terminal(arguments("terminal"))
    assert code == 0, terminal
    # The bar (drawn when each epoch starts, then refreshed) is on the terminal.
    assert "\rEpoch 1/2   0%|" in terminal and "\rEpoch 2/2" in terminal
    redirected = helpers.run_main_process(arguments("redirected"),
                                          MNIST_TRAINER_HEARTBEAT_SECONDS="0.02")
    assert redirected.returncode == 0, redirected.stderr
    for text in (redirected.stdout, redirected.stderr):
        assert "\r" not in text and "\x1b" not in text
    heartbeats = [line for line in redirected.stderr.splitlines() if ": step " in line]
    assert heartbeats and all("img/s" in line and "loss" in line for line in heartbeats)
    assert "Epoch 2/2" in redirected.stdout
    assert_same_run(tmp_path / "terminal", tmp_path / "redirected")


def test_quiet_prints_only_the_epoch_blocks_and_the_final_line(tiny_mnist_dir, tmp_path, capsys):
    code, out, err = helpers.run_main(
        capsys, "--data-dir", tiny_mnist_dir, "--run-dir", tmp_path / "run", "--preset",
        "fast", "--epochs", 2, "--batch-size", 16, "--quiet")
    assert code == 0, err
    assert err == ""
    lines = out.splitlines()
    assert lines[0].startswith("Epoch 1/2") and lines[-1].startswith("Done: 2 epochs.")
    block = ("Epoch ", "  train ", "  validation ", "  test ", "  saved ")
    assert all(line.startswith(block) for line in lines[:-1]), lines


def test_estimates_leave_out_the_slow_first_step_and_wait_for_a_few_steps():
    clock, stream = FakeClock(), io.StringIO()
    shown = progress.EpochProgress("heartbeat", 1, 1, steps=1000, done=0, batch_size=10,
                                   stream=stream, clock=clock)
    clock.now = 120.0  # the first step traces and compiles: two minutes
    shown.after_step(1, _sums(1, 10))
    assert "left" not in stream.getvalue() and "- img/s" in stream.getvalue()
    for step in range(2, 62):
        clock.now += 1.0  # then one second per step
        shown.after_step(step, _sums(step, 10))
    last = stream.getvalue().splitlines()[-1]
    # 60 timed steps in 60 s: 10 img/s and 939 steps (15:39) left, not the 2 minutes of
    # the first step spread over them.
    assert "step 61/1000" in last and "10 img/s" in last and "15:39 left in the epoch" in last


def test_a_narrow_bar_keeps_the_time_left(monkeypatch):
    # 80 columns and no height, as some containers report: a fixed-size bar.
    monkeypatch.setattr(progress, "_terminal_size", lambda stream: (80, 0))
    clock, stream = FakeClock(), io.StringIO()
    shown = progress.EpochProgress("bar", 1, 2, steps=100, done=0, batch_size=10,
                                   stream=stream, clock=clock)
    for step in range(1, 51):
        clock.now += 0.1
        shown.after_step(step, _sums(step, 10))
    frames = [frame for frame in stream.getvalue().split("\r") if frame.strip()]
    assert "left 0:05, run " in frames[-1] and all(len(frame) <= 80 for frame in frames)
