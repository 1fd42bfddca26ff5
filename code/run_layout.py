"""The names of everything in a run directory: how each is made, and how each is recognised.

`cp_utils` writes these names and `learning_env_setting` finds, checks and removes them;
both ask this module, so a name can never be made one way and recognised another. Only
names this module makes are ever removed from a run directory: a user's own files never
match. Nothing here touches the disk.

    config.json              the run's settings, data and library versions (run_record)
    metrics.csv              one row per completed epoch
    test_result.txt          the test results per epoch, for people
    LATEST                   the name of the newest complete epoch folder
    in_progress.checkpoint   the newest mid-epoch state, while an epoch is under way
    report.html              the run's report page, rewritten after every epoch
    epoch_0001/ ...          one folder per completed epoch: checkpoint, confusion_matrix.png,
                             losses_accs.png, misclassified.png, metrics.json
    tensorboard/             TensorBoard event files, one per epoch:
                             events.out.tfevents.epoch_0001.mnist-trainer, ...
    best/                    the best epoch's model: model.keras, saved_model/, best.json

and, only while something is being written: `.epoch_0001.partial/` (an epoch folder being
assembled), `.epoch_0001.stale-<pid>.partial/` (a folder being replaced), `.best.partial/`
and `.best.stale-<pid>.partial/` (the same for best/), `<file>.tmp-<pid>` (a run file being
replaced), `.write-test-<pid>` (the writability probe), and inside tensorboard/
`.epoch_0001.partial/` (an event file being written).
"""

import os
import re

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
TEST_RESULT_FILE = "test_result.txt"
LATEST_FILE = "LATEST"
IN_PROGRESS_FILE = "in_progress.checkpoint"
REPORT_FILE = "report.html"
# The run's own files at its top level, each replaced atomically (cp_utils.atomic_write).
RUN_FILES = (CONFIG_FILE, METRICS_FILE, TEST_RESULT_FILE, LATEST_FILE, IN_PROGRESS_FILE,
             REPORT_FILE)
CHECKPOINT_FILE = "checkpoint"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
LOSS_ACCURACY_FILE = "losses_accs.png"
MISCLASSIFIED_FILE = "misclassified.png"
EPOCH_METRICS_FILE = "metrics.json"
TENSORBOARD_DIR = "tensorboard"
BEST_DIR = "best"
BEST_MODEL_FILE = "model.keras"
BEST_SAVED_MODEL_DIR = "saved_model"
BEST_RECORD_FILE = "best.json"
# The run's own folders at its top level besides the epoch folders.
RUN_FOLDERS = (TENSORBOARD_DIR, BEST_DIR)

_EPOCH_DIR = re.compile(r"^epoch_(\d{4,})$")
_EVENT_FILE = re.compile(r"^events\.out\.tfevents\.epoch_(\d{4,})\.mnist-trainer$")
_TEMPORARY = re.compile(
    r"^(?:\.epoch_\d{4,}(?:\.stale-\d+)?\.partial"
    r"|\.best(?:\.stale-\d+)?\.partial"
    r"|(?:" + "|".join(re.escape(name) for name in RUN_FILES) + r")\.tmp-\d+"
    r"|\.write-test-\d+)$"
)


def epoch_dir_name(epoch):
    """The folder of 1-based `epoch`: epoch_0001."""
    return f"epoch_{epoch:04d}"


def epoch_of(name):
    """The epoch an epoch folder's name stands for, or None for any other name."""
    match = _EPOCH_DIR.match(name)
    return int(match.group(1)) if match else None


def partial_dir_name(epoch):
    """Where the folder of `epoch` is assembled before it gets its name."""
    return f".{epoch_dir_name(epoch)}.partial"


def stale_dir_name(epoch):
    """Where an existing folder of `epoch` goes while it is replaced."""
    return f".{epoch_dir_name(epoch)}.stale-{os.getpid()}.partial"


def best_partial_name():
    """Where the next best/ is assembled before it replaces the current one."""
    return ".best.partial"


def best_stale_name():
    """Where the current best/ goes while it is replaced."""
    return f".best.stale-{os.getpid()}.partial"


def event_file_name(epoch):
    """The TensorBoard event file of `epoch` in tensorboard/. TensorBoard reads every file
    whose name holds "tfevents"; one name per epoch means a rewritten epoch replaces its
    file rather than adding a second value."""
    return f"events.out.tfevents.{epoch_dir_name(epoch)}.mnist-trainer"


def event_file_epoch(name):
    """The epoch of an event file's name, or None for any other name."""
    match = _EVENT_FILE.match(name)
    return int(match.group(1)) if match else None


def temporary_file_name(name):
    """The temporary name under which run file `name` is written before it is renamed."""
    if name not in RUN_FILES:
        raise ValueError(f"{name!r} is not one of the run files {RUN_FILES}")
    return f"{name}.tmp-{os.getpid()}"


def write_probe_name():
    """The file that proves a run directory can be written (created and removed at once)."""
    return f".write-test-{os.getpid()}"


def is_temporary(name):
    """Whether `name` is something half-written that a killed process can leave behind."""
    return bool(_TEMPORARY.match(name))


def is_result(name):
    """Whether `name` is one of a run's results (a run file, an epoch folder, tensorboard/
    or best/)."""
    return name in RUN_FILES or name in RUN_FOLDERS or epoch_of(name) is not None


def is_own(name):
    """Whether this program makes `name` in a run directory."""
    return is_result(name) or is_temporary(name)
