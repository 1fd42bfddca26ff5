"""The run directory: where it is, opening and locking it, its saved record, and what to resume from.

A run directory is the identity of a run. Rerunning the same command against it continues
after the newest complete epoch, which the `LATEST` file names (never guessed from a
listing). `--overwrite` is the only way anything of a run is removed, and only names this
program makes (`run_layout`) are ever removed. This module imports no TensorFlow.
"""

import dataclasses
import errno
import fcntl
import os
import shutil

import run_layout
import run_record
from basic_utils import UserError


def run_dir_path(config, data_source):
    """The absolute run directory: `--run-dir`, else runs/<dataset>-<preset>-<data> under
    the current folder, so that each recipe and each kind of data source (tfds, idx,
    packaged) has a folder of its own."""
    if config.run_dir:
        return os.path.abspath(config.run_dir)
    kind = data_source.split(":", 1)[0]
    return os.path.abspath(os.path.join("runs", f"{config.dataset}-{config.preset}-{kind}"))


@dataclasses.dataclass
class RunDirectory:
    """An opened, locked run directory and what an earlier invocation left in it."""

    path: str
    latest_epoch: int  # the newest complete epoch, 0 when none is
    saved_record: dict | None  # config.json as an earlier invocation saved it
    lock_fd: int
    # --overwrite: the earlier results are removed by `clear_earlier_results`, once the
    # new run has proved it can start, so a mistake that stops the start-up loses nothing.
    overwrite_pending: bool = False
    created: tuple = ()  # folders this invocation created, deepest first

    def epoch_path(self, epoch):
        return os.path.join(self.path, run_layout.epoch_dir_name(epoch))

    def file_path(self, name):
        return os.path.join(self.path, name)

    def remove_temporaries(self):
        """Delete half-written folders and files left by a killed run (they only get their
        final names once complete, so they are never results); returns their names."""
        return _remove(self.path, run_layout.is_temporary)

    def clear_earlier_results(self):
        """Carry out a pending --overwrite; returns the names removed.

        config.json stays until the new run's record replaces it (atomically), so a crash
        in between leaves a folder that is still recognised as a run.
        """
        if not self.overwrite_pending:
            return []
        self.overwrite_pending = False
        return _remove(self.path, lambda name: (run_layout.is_own(name)
                                                and name != run_layout.CONFIG_FILE))

    def close(self):
        """Remove the folders this invocation created if nothing was written into them (a
        failed start leaves no empty run directory), then release the lock (in this order,
        so that no other process can have taken the folder meanwhile)."""
        _remove_empty(self.created)
        os.close(self.lock_fd)


def _remove(path, matches):
    """Delete the entries of `path` whose names `matches` accepts; returns their names."""
    removed = []
    for name in sorted(os.listdir(path)):
        if not matches(name):
            continue
        full = os.path.join(path, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        else:
            os.remove(full)
        removed.append(name)
    return removed


def _remove_empty(folders):
    """Remove `folders` (deepest first) while they are empty."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            break


def continue_setting(run_dir):
    """The newest complete epoch of a run directory (0 if none), read from its LATEST file.

    An epoch folder counts as complete only once LATEST names it: folders are assembled
    under a temporary name, renamed, and only then does LATEST move.
    """
    latest_path = os.path.join(run_dir, run_layout.LATEST_FILE)
    if os.path.exists(latest_path):
        with open(latest_path, encoding="utf-8") as handle:
            name = handle.read().strip()
        epoch = run_layout.epoch_of(name)
        if epoch is None or not os.path.isdir(os.path.join(run_dir, name)):
            raise UserError(
                f"{latest_path} names {name!r}, which is not a complete epoch folder; the "
                "run directory was edited by hand. Restore it or start over with --overwrite.")
        return epoch
    # Without LATEST, a crash can leave only epoch_0001 (renamed, LATEST not yet written),
    # which the next save replaces. Later folders mean LATEST was deleted, and starting
    # over would overwrite finished epochs. (A LATEST behind later folders is left alone:
    # falling back past unreadable checkpoints makes that.)
    beyond = sorted(name for name in os.listdir(run_dir) if (run_layout.epoch_of(name) or 0) > 1)
    if beyond:
        raise UserError(
            f"{latest_path} is missing, but {run_dir} holds {', '.join(beyond)}; starting "
            f"over would overwrite them. Write the newest complete epoch folder's name (e.g. "
            f"{beyond[-1]}) into {run_layout.LATEST_FILE}, or start over with --overwrite.")
    return 0


def _ensure_writable_directory(path):
    """Create `path` if needed and prove it is a writable directory."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"run directory {path} is a file; pass another --run-dir.")
    probe = os.path.join(path, run_layout.write_probe_name())
    try:
        os.makedirs(path, exist_ok=True)
        try:
            with open(probe, "w", encoding="utf-8") as handle:
                handle.write("ok")
                handle.flush()
                os.fsync(handle.fileno())  # a full disk shows here, not later
        finally:
            if os.path.exists(probe):
                os.remove(probe)
    except OSError as error:
        raise UserError(f"cannot write to run directory {path} ({error.strerror or error}); "
                        "pass a writable --run-dir.") from None


def _lock(path):
    """Take an exclusive lock on the run directory, so that two processes never share it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.EAGAIN, errno.EACCES):
            raise UserError(f"run directory {path} is in use by another training process; "
                            "wait for it to finish or pass another --run-dir.") from None
        raise
    return fd


def dir_setting(path, overwrite=False):
    """Open the run directory `path` (creating it if needed) and lock it.

    Returns a `RunDirectory`. With `overwrite` it reads nothing of an earlier run (which
    may be damaged) and leaves its removal to `RunDirectory.clear_earlier_results`.
    Raises `UserError` for a path that is a file, cannot be written or is in use, a folder
    that holds other files but no run, and a LATEST file that disagrees with the folders.
    """
    created, folder = [], path
    while not os.path.lexists(folder):
        created.append(folder)
        folder = os.path.dirname(folder)
    try:
        _ensure_writable_directory(path)
    except UserError:
        _remove_empty(created)
        raise
    lock_fd = _lock(path)
    try:
        saved, damaged = _saved_record(path, overwrite)
        if saved is None:
            _check_holds_no_foreign_files(path, damaged, overwrite)
        if overwrite:
            return RunDirectory(path, 0, None, lock_fd, overwrite_pending=True,
                                created=tuple(created))
        return RunDirectory(path, continue_setting(path), saved, lock_fd, created=tuple(created))
    except BaseException:
        _remove_empty(created)
        os.close(lock_fd)
        raise


def _saved_record(path, overwrite):
    """(config.json's record or None, whether a config.json exists but cannot be parsed);
    an unparsable one is an error unless --overwrite is to clear it."""
    config_path = os.path.join(path, run_layout.CONFIG_FILE)
    if not os.path.exists(config_path):
        return None, False
    try:
        return run_record.read_record(config_path), False
    except UserError:
        if not overwrite:
            raise
        return None, True


def _check_holds_no_foreign_files(path, damaged_config, overwrite):
    """A folder without a record of this program may be used only if it is empty, or holds
    nothing but this program's names (a damaged run, which only --overwrite may clear)."""
    listed = sorted(name for name in os.listdir(path) if not run_layout.is_temporary(name))
    foreign = [name for name in listed if not run_layout.is_own(name)
               or (name == run_layout.CONFIG_FILE and not damaged_config)]
    shown = ", ".join(listed[:6]) + (", ..." if len(listed) > 6 else "")
    if foreign:
        raise UserError(f"run directory {path} is not empty and holds no run of this program "
                        f"({shown}); pass a new or empty --run-dir.")
    if listed and not overwrite:
        raise UserError(f"{path} holds files of a run ({shown}) but no "
                        f"{run_layout.CONFIG_FILE}; pass another --run-dir or start over "
                        "with --overwrite.")
