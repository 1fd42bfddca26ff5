"""Console reporting, seeding, signals and the user-error type: small helpers with no better home.

Nothing here imports TensorFlow at module level, so the command line can be parsed and
rejected before the (slow) TensorFlow import.
"""

import os
import shlex
import signal


def set_tensorflow_environment(log_level="3"):
    """Defaults for the environment variables TensorFlow reads when it loads; call this
    before the first `import tensorflow`. A value already set (by the user) wins.

    TF_ENABLE_ONEDNN_OPTS=1 turns on the oneDNN CPU kernels, which TensorFlow enables by
    itself only on CPUs with AVX-512 deep-learning instructions. On this project's 2-core
    AVX2 machine they train the standard network about 1.3x faster (1.4-1.6x together
    with `model.FusedBatchNorm`; benchmarks/kernels.py); 0 selects TensorFlow's Eigen kernels.
    TF_CPP_MIN_LOG_LEVEL keeps TensorFlow's C++ log messages off the console; the few lines
    it writes before its logging starts (CUDA probe, oneDNN notice) still appear.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", log_level)
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


class UserError(Exception):
    """A problem the user caused and can fix (bad flag, missing data, wrong run directory).

    `main.py` prints the message as one line and exits with code 2; no traceback.
    """


class StopRequested(Exception):
    """Raised inside the training loop when SIGINT or SIGTERM arrives.

    `signal_number` tells the loop which exit code to use (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, signal_number, detail=""):
        super().__init__(f"stopped by signal {signal_number}")
        self.signal_number = signal_number
        self.detail = detail


class StopSignal:
    """Records SIGINT and SIGTERM instead of raising wherever the program happens to be.

    The training loop calls `check()` between steps and phases; it raises
    `StopRequested` once a signal arrived, so a step or a file write is never cut in half.
    A second Ctrl-C while waiting raises `KeyboardInterrupt` at once, for an impatient user.
    """

    def __init__(self):
        self.received = None
        self._previous = {}
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            self._previous[signal_number] = signal.signal(signal_number, self._handle)

    def _handle(self, signal_number, frame):
        if self.received is not None and signal_number == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal_number

    def check(self, detail=""):
        """Raise `StopRequested` (carrying `detail` for the message) if a signal arrived."""
        if self.received is not None:
            raise StopRequested(self.received, detail)

    def restore(self):
        """Put back the handlers that were installed before (safe to call twice)."""
        for signal_number, handler in self._previous.items():
            signal.signal(signal_number, handler)
        self._previous = {}


def set_global_seed(seed, deterministic=True):
    """Seed Python, NumPy and TensorFlow; optionally make TensorFlow ops deterministic."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def resume_command(script, arguments):
    """The shell command that continues this run: the same arguments minus `--overwrite`.

    Rerunning with `--overwrite` would start over, which is the opposite of resuming.
    """
    kept = [argument for argument in arguments if argument != "--overwrite"]
    return shlex.join(["python", script, *kept])


def format_seconds(seconds):
    """Human-readable duration: '42.1 s' or '3 min 05 s'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s"


def training_reporter(row, total_epochs, timing=None):
    """Format one completed epoch as a readable block of text (the caller prints it).

    `row` holds the split-prefixed numbers of the epoch (`train_loss`, `val_accuracy`, ...)
    and `seconds`; accuracies are fractions and are shown as percentages. `timing`, if
    given, maps phases (train, validation, ...) to seconds and is shown on the first line.
    """
    width = len(str(total_epochs))
    header = f"Epoch {row['epoch']:>{width}}/{total_epochs}  ({format_seconds(row['seconds'])}"
    if timing:
        header += ": " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timing.items())
    lines = [header + ")"]
    for split, label in (("train", "train"), ("val", "validation"), ("test", "test")):
        lines.append(
            f"  {label:<10}  loss {row[split + '_loss']:.4f}"
            f"  accuracy {100.0 * row[split + '_accuracy']:6.2f}%"
        )
    return "\n".join(lines)
