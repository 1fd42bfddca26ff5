"""Console reporting, seeding, signals and the user-error type: small helpers with no better home.

Nothing here imports TensorFlow at module level, so the command line can be parsed and
rejected before the (slow) TensorFlow import.
"""

import os
import re
import shlex
import signal
import sys
import tempfile


def set_tensorflow_environment(log_level="3"):
    """Defaults for the environment variables TensorFlow reads when it loads; call this
    before the first `import tensorflow`. A value already set (by the user) wins.

    TF_ENABLE_ONEDNN_OPTS=1 turns on the oneDNN CPU kernels, which TensorFlow turns on by
    itself only on CPUs with AVX-512 deep-learning instructions; on the AVX2 machines
    measured they train faster (benchmarks/RESULTS.md), and 0 selects TensorFlow's Eigen
    kernels. TF_CPP_MIN_LOG_LEVEL keeps TensorFlow's C++ log messages off the console.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", log_level)
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


# Lines TensorFlow's libraries write to stderr as they load, before its log level applies,
# each twice (two libraries load), and none that a user of this program acts on: the
# "Compute:" line says where the run computes.
_LOAD_NOTICES = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers on your machine"
    r"|computation placer already registered"
    r"|Unable to register cu(?:DNN|FFT|BLAS) factory"
    r"|TF-TRT Warning")


def import_tensorflow():
    """Import TensorFlow with its load-time notices held back, and return it.

    Its libraries write to file descriptor 2 directly, so the descriptor is pointed at a
    temporary file while they load; afterwards every line that is not a known notice is
    written to stderr once, so that an error or an unexpected warning still shows.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            shown = set()
            for line in capture.read().decode("utf-8", "replace").splitlines():
                # The same message from each library differs only in its time stamp.
                message = re.sub(r"^[IWEF]\d{4} [\d:. ]+\d+ ", "", line)
                if line.strip() and not _LOAD_NOTICES.search(line) and message not in shown:
                    shown.add(message)
                    print(line, file=sys.stderr)
    return tensorflow


class UserError(Exception):
    """A problem the user caused and can fix (bad flag, missing data, wrong run directory).

    `main.py` prints the message as one line and exits with code 2; no traceback.
    """


class Diverged(Exception):
    """Training produced a loss or weights that are not finite, or a loss far above
    guessing. The message says what, as a phrase ("its training loss was 1e+29"); the loop
    adds where and what to do."""


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
