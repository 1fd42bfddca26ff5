"""Progress inside an epoch, on standard error: a tqdm bar on a terminal, else a heartbeat line.

On a terminal the bar shows the steps done of the epoch, images per second, the time left
in the epoch and in the run, and the epoch's running loss and accuracy (on a terminal
narrower than NARROW_COLUMNS, without images per second). Estimates wait for
MIN_TIMED_STEPS steps after the first, whose tracing would make them far too long. It is redrawn at
most `REFRESH_SECONDS` apart: between redraws a step costs one clock reading and a
comparison. Anywhere else (a file, a pipe, CI, nohup) carriage returns and escape codes
would garble the log, so a plain line is written every `HEARTBEAT_SECONDS` instead.
`--quiet` shows neither. The numbers come from the running sums the training loop reads
after every step anyway (to check for divergence), so reporting adds no reads of the
device.
"""

import os
import sys
import time

REFRESH_SECONDS = 0.25
# Test-only: MNIST_TRAINER_HEARTBEAT_SECONDS shortens the interval, so that a test of a
# few seconds sees heartbeat lines.
HEARTBEAT_SECONDS = float(os.environ.get("MNIST_TRAINER_HEARTBEAT_SECONDS", "60"))
MODES = ("bar", "heartbeat", "quiet")


def choose_mode(quiet, stream=None):
    """'quiet' with --quiet, 'bar' when `stream` (standard error) is a terminal, else
    'heartbeat'."""
    stream = sys.stderr if stream is None else stream
    if quiet:
        return "quiet"
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "heartbeat"


# Estimates wait for this many timed steps: the first step of a run (tracing the step)
# and of an invocation (warming up) take far longer than the rest.
MIN_TIMED_STEPS = 5
# Below this many columns the bar's numbers are shortened so that the time left still fits.
NARROW_COLUMNS = 110


def _terminal_size(stream):
    """(columns, rows) of the terminal `stream` writes to, (0, 0) when unknown."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return 0, 0
    return size.columns, size.lines


def _clock_text(seconds):
    """'1:05:09', '4:12' or '0:07' (hours only when needed)."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class EpochProgress:
    """The progress of one epoch's training, from its step `done` (a resumed epoch) on.

    `after_step(step, sums)` is called after every step with the number of steps of the
    epoch done and the running (loss sum, correct, count); `close()` ends the display
    before the epoch's block is printed. `later_seconds` estimates the seconds of the run
    beyond this epoch's training: (remaining whole epochs, seconds of an epoch's
    evaluation and saving).
    """

    def __init__(self, mode, epoch, total_epochs, steps, done, batch_size,
                 later_epochs=0, overhead_seconds=0.0, stream=None, clock=time.monotonic):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode, self.epoch, self.total_epochs = mode, epoch, total_epochs
        self.steps, self.first, self.done = steps, done, done
        self.batch_size = batch_size
        self.later_epochs, self.overhead_seconds = later_epochs, overhead_seconds
        self.stream = sys.stderr if stream is None else stream
        self.clock = clock
        self.started = self.last_shown = clock()
        self.timed_from = None  # (time, step) after the first step, where timing starts
        self.bar, self.narrow = None, False
        if mode == "bar":
            import tqdm  # only where a bar is drawn

            width = len(str(total_epochs))
            # tqdm draws nothing on a terminal that reports no width or no height (a bare
            # pseudo-terminal, some containers); such a one gets a fixed size instead.
            columns, rows = _terminal_size(self.stream)
            follow_size = columns > 0 and rows > 0
            self.narrow = (columns or NARROW_COLUMNS) < NARROW_COLUMNS
            self.bar = tqdm.tqdm(
                total=steps, initial=done, file=self.stream, leave=False, unit="step",
                desc=f"Epoch {epoch:>{width}}/{total_epochs}",
                dynamic_ncols=follow_size, ncols=None if follow_size else (columns or 110),
                nrows=None if follow_size else 24,
                # This class decides when to redraw; tqdm must not wait for more steps.
                mininterval=0, miniters=1,
                # The time left is this class's: tqdm's own counts the slow first step.
                bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                           "[{elapsed}]{postfix}")

    def after_step(self, step, sums):
        if self.mode == "quiet":
            return
        now = self.clock()
        if self.timed_from is None:
            self.timed_from = (now, step)
        interval = REFRESH_SECONDS if self.mode == "bar" else HEARTBEAT_SECONDS
        if now - self.last_shown < interval:
            return
        self.last_shown = now
        self.done = step
        if self.mode == "bar":
            self.bar.set_postfix_str(self._numbers(now, sums), refresh=False)
            self.bar.update(step - self.bar.n)
        else:
            self.stream.write(f"  epoch {self.epoch}/{self.total_epochs}: step {step}/"
                              f"{self.steps}, {self._numbers(now, sums)}\n")
            self.stream.flush()

    def _numbers(self, now, sums):
        """'4,380 img/s, loss 0.1234, accuracy 96.50%, ...' for the bar or the heartbeat."""
        loss, correct, count = (float(value) for value in sums)
        bar = self.mode == "bar"  # a bar has less room than a line
        start_time, start_step = self.timed_from
        timed = self.done - start_step
        step_rate = timed / max(now - start_time, 1e-9) if timed >= MIN_TIMED_STEPS else 0.0
        if self.narrow:
            words = [f"loss {loss / count:.3f}" if count else "loss -",
                     f"acc {100 * correct / count:.1f}%" if count else "acc -"]
        else:
            words = [f"{step_rate * self.batch_size:,.0f} img/s" if step_rate else "- img/s",
                     f"loss {loss / count:.4f}" if count else "loss -",
                     f"{'acc' if bar else 'accuracy'} {100 * correct / count:.2f}%"
                     if count else "accuracy -"]
        if step_rate > 0:
            epoch_left = (self.steps - self.done) / step_rate
            run_left = epoch_left + self.overhead_seconds + self.later_epochs * (
                self.steps / step_rate + self.overhead_seconds)
            if self.narrow:
                words.append(f"left {_clock_text(epoch_left)}, run {_clock_text(run_left)}")
            elif bar:
                words.append(f"{_clock_text(epoch_left)} left, run {_clock_text(run_left)}")
            else:
                words.append(f"{_clock_text(epoch_left)} left in the epoch, "
                             f"{_clock_text(run_left)} in the run")
        return ", ".join(words)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
