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
    epoch_0001/ ...          one folder per completed epoch: checkpoint, confusion_matrix.png,
                             losses_accs.png, metrics.json

and, only while something is being written: `.epoch_0001.partial/` (an epoch folder being
assembled), `.epoch_0001.stale-<pid>.partial/` (a folder being replaced), `<file>.tmp-<pid>`
(a run file being replaced) and `.write-test-<pid>` (the writability probe).
"""

import os
import re

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
TEST_RESULT_FILE = "test_result.txt"
LATEST_FILE = "LATEST"
IN_PROGRESS_FILE = "in_progress.checkpoint"
# The run's own files at its top level, each replaced atomically (cp_utils.atomic_write).
RUN_FILES = (CONFIG_FILE, METRICS_FILE, TEST_RESULT_FILE, LATEST_FILE, IN_PROGRESS_FILE)
CHECKPOINT_FILE = "checkpoint"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
LOSS_ACCURACY_FILE = "losses_accs.png"
EPOCH_METRICS_FILE = "metrics.json"

_EPOCH_DIR = re.compile(r"^epoch_(\d{4,})$")
_TEMPORARY = re.compile(
    r"^(?:\.epoch_\d{4,}(?:\.stale-\d+)?\.partial"
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
    """Whether `name` is one of a run's results (a run file or an epoch folder)."""
    return name in RUN_FILES or epoch_of(name) is not None


def is_own(name):
    """Whether this program makes `name` in a run directory."""
    return is_result(name) or is_temporary(name)
