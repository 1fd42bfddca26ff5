"""The run directory: its one configuration, its saved config.json, and what to resume from.

A run directory is the identity of a run. Rerunning the same command against it continues
after the newest complete epoch (named by the `LATEST` file, never guessed from a listing).
Settings that would change the results must match the saved ones; `--overwrite` is the only
way anything in it is removed. This module imports no TensorFlow.
"""

import dataclasses
import errno
import fcntl
import json
import os
import re
import shutil

from basic_utils import UserError

DATASETS = ("mnist", "fashion_mnist")
EPOCH_DIR_PATTERN = re.compile(r"^epoch_(\d{4,})$")
LATEST_FILE = "LATEST"
CONFIG_FILE = "config.json"
# Files and folders this program writes into a run directory; `--overwrite` removes these
# and nothing else, so a user's own notes in the folder survive.
RUN_FILES = (CONFIG_FILE, "metrics.csv", "test_result.txt", LATEST_FILE, "in_progress.checkpoint")


# Named bundles of the settings that define a recipe. A flag given on the command line
# overrides its preset's value; the defaults of `Config` are the "standard" preset.
PRESETS = {
    # Best accuracy within ten minutes on two CPU cores: a four-convolution batch-normalised
    # convnet, augmentation (off for the last two epochs), Adam with a one-cycle schedule.
    "standard": {
        "model": "convnet", "epochs": 20, "batch_size": 128, "optimizer": "adam",
        "learning_rate": 3e-3, "schedule": "one-cycle", "validation_fraction": 0.1,
        "augment": True, "clean_epochs": 2, "weight_average": 0.999,
    },
    # Shortest time to 99 % test accuracy: a smaller convnet, two epochs, no augmentation.
    "fast": {
        "model": "convnet-fast", "epochs": 2, "batch_size": 128, "optimizer": "adam",
        "learning_rate": 1e-2, "schedule": "one-cycle", "validation_fraction": 0.1,
        "augment": False, "clean_epochs": 0, "weight_average": 0.0,
    },
    # The original project's recipe, for comparison: its network, plain SGD at 0.01,
    # batch 32, an 80/20 split, no augmentation, 50 epochs.
    "seed": {
        "model": "seed", "epochs": 50, "batch_size": 32, "optimizer": "sgd",
        "learning_rate": 0.01, "schedule": "constant", "validation_fraction": 0.2,
        "augment": False, "clean_epochs": 0, "weight_average": 0.0,
    },
}
MODELS = ("convnet", "convnet-fast", "seed")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("one-cycle", "constant")
# float32 throughout, or float16 arithmetic with float32 weights and loss scaling ("mixed");
# "auto" picks mixed when TensorFlow sees a GPU (see `resolve_precision`).
PRECISIONS = ("auto", "float32", "mixed")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a run. Saved as config.json and inside every checkpoint."""

    preset: str = "standard"
    model: str = "convnet"
    epochs: int = 20
    batch_size: int = 128
    optimizer: str = "adam"
    learning_rate: float = 3e-3
    schedule: str = "one-cycle"
    seed: int = 0
    validation_fraction: float = 0.1
    dataset: str = "mnist"
    augment: bool = True
    clean_epochs: int = 2
    weight_average: float = 0.999
    deterministic: bool = True
    precision: str = "auto"
    xla: bool = False
    checkpoint_every_steps: int = 250
    data_dir: str | None = None
    run_dir: str | None = None
    overwrite: bool = False

    def resolved_run_dir(self):
        """Absolute run directory: `--run-dir`, or runs/<dataset> under the current folder."""
        return os.path.abspath(self.run_dir or os.path.join("runs", self.dataset))


def make_config(preset="standard", **settings):
    """The `Config` of `preset`, with `settings` (given flags) overriding the preset's values."""
    if preset not in PRESETS:
        raise UserError(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    return Config(preset=preset, **{**PRESETS[preset], **settings})


# Settings that change what a run computes. Changing any of them against an existing run
# directory is refused; `epochs` may change (the run is extended or shortened), the others
# are cosmetic. "model" is the versioned architecture name.
RESULT_SETTINGS = (
    "batch_size",
    "optimizer",
    "learning_rate",
    "schedule",
    "seed",
    "validation_fraction",
    "dataset",
    "augment",
    "clean_epochs",
    "weight_average",
    "deterministic",
    "precision",
    "model",
    "data_source",
    "data_fingerprint",
)
# What a config.json saved before a setting existed implies for it.
SAVED_DEFAULTS = {"precision": "float32"}


def describe_augmentation(config):
    """The run's augmentation in words, e.g. 'on (off in the last 2 epochs)'."""
    if not config.augment:
        return "off"
    if not config.clean_epochs:
        return "on"
    if config.clean_epochs >= config.epochs:
        return f"off (--clean-epochs {config.clean_epochs} covers all {config.epochs} epochs)"
    return f"on (off in the last {config.clean_epochs} epochs)"


def validate_config(config):
    """Reject settings that cannot work, with the bad value in the message."""
    if config.epochs <= 0:
        raise UserError(f"--epochs must be a positive integer, got {config.epochs}.")
    if config.batch_size <= 0:
        raise UserError(f"--batch-size must be a positive integer, got {config.batch_size}.")
    if not config.learning_rate > 0:
        raise UserError(f"--learning-rate must be positive, got {config.learning_rate}.")
    if config.clean_epochs < 0:
        raise UserError(f"--clean-epochs must be 0 or a positive integer, got {config.clean_epochs}.")
    if not 0 <= config.weight_average < 1:
        raise UserError(f"--weight-average must be at least 0 and below 1 (0 turns it off), "
                        f"got {config.weight_average}.")
    for flag, value, choices in (("--model", config.model, MODELS),
                                 ("--optimizer", config.optimizer, OPTIMIZERS),
                                 ("--schedule", config.schedule, SCHEDULES),
                                 ("--precision", config.precision, PRECISIONS),
                                 ("--preset", config.preset, tuple(PRESETS))):
        if value not in choices:
            raise UserError(f"unknown {flag} {value!r}; choose one of {', '.join(choices)}.")
    if not 0 < config.validation_fraction < 1:
        raise UserError(
            f"--validation-fraction must be between 0 and 1 (exclusive), "
            f"got {config.validation_fraction}."
        )
    if config.checkpoint_every_steps < 0:
        raise UserError(
            f"--checkpoint-every-steps must be 0 (off) or positive, got {config.checkpoint_every_steps}."
        )
    if config.dataset not in DATASETS:
        raise UserError(
            f"unknown --dataset {config.dataset!r}; choose one of {', '.join(DATASETS)}."
        )
    if config.xla and config.deterministic:
        raise UserError(
            "--xla needs --no-determinism: XLA has no deterministic gradient of max-pooling, "
            "so TensorFlow refuses to compile the training step while op determinism is on."
        )


def resolve_precision(requested, saved_config, gpu_available):
    """The precision a run trains in: 'float32' or 'mixed'.

    An explicit --precision wins (a resumed run refuses a change, as for other settings).
    'auto' keeps what a resumed run was trained in, else picks mixed precision when a GPU
    is present (its tensor cores compute in float16) and float32 on CPUs, where float16
    trains 3.6x slower (666 vs 2,406 images/s in benchmarks/speed.py on two cores).
    """
    if requested != "auto":
        return requested
    if saved_config is not None:
        return saved_config.get("precision", SAVED_DEFAULTS["precision"])
    return "mixed" if gpu_available else "float32"


def epoch_dir_name(epoch):
    """Folder name of a 1-based epoch: epoch_0001."""
    return f"epoch_{epoch:04d}"


@dataclasses.dataclass
class RunDirectory:
    """An opened, locked run directory and the newest complete epoch found in it."""

    path: str
    latest_epoch: int  # 0 when no epoch is complete yet
    saved_config: dict | None  # config.json as saved by an earlier invocation
    lock_fd: int
    # --overwrite: the earlier results are removed by `clear_earlier_results`, once the
    # data has loaded, so a mistake that stops the start-up leaves them untouched.
    overwrite_pending: bool = False
    created: tuple = ()  # folders this invocation created, deepest first

    def epoch_path(self, epoch):
        return os.path.join(self.path, epoch_dir_name(epoch))

    def clear_earlier_results(self):
        """Carry out a pending --overwrite; returns the names removed.

        config.json stays until the new run's record replaces it (atomically), so a crash
        in between leaves a folder that is still recognised as a run.
        """
        if not self.overwrite_pending:
            return []
        self.overwrite_pending = False
        return _remove_run_outputs(self.path, keep=(CONFIG_FILE,))

    def close(self):
        """Remove the folders this invocation created if nothing was written into them (a
        start-up that failed leaves no empty run directory), then release the lock (in
        this order, so no other process can have taken the folder meanwhile)."""
        _remove_empty(self.created)
        os.close(self.lock_fd)


def _remove_empty(folders):
    """Remove `folders` (deepest first) while they are empty."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            break


def continue_setting(run_dir):
    """The newest complete epoch of a run directory (0 if none), read from its LATEST file.

    An epoch folder counts as complete only once LATEST names it: folders are written
    under a temporary name, renamed, and only then is LATEST moved.
    """
    latest_path = os.path.join(run_dir, LATEST_FILE)
    latest = 0
    if os.path.exists(latest_path):
        with open(latest_path, encoding="utf-8") as handle:
            name = handle.read().strip()
        match = EPOCH_DIR_PATTERN.match(name)
        if not match or not os.path.isdir(os.path.join(run_dir, name)):
            raise UserError(
                f"{latest_path} names {name!r}, which is not a complete epoch folder; "
                "the run directory was edited by hand. Restore it or start over with "
                "--overwrite."
            )
        latest = int(match.group(1))
    else:
        # Without LATEST, a crash can leave only epoch_0001 (renamed, LATEST not yet
        # written), which the next save replaces. Later folders mean LATEST was deleted,
        # and starting over would overwrite finished epochs. (A LATEST behind later
        # folders is left alone: falling back past unreadable checkpoints makes that.)
        beyond = sorted(name for name in os.listdir(run_dir)
                        if (match := EPOCH_DIR_PATTERN.match(name)) and int(match.group(1)) > 1)
        if beyond:
            raise UserError(
                f"{latest_path} is missing, but {run_dir} holds {', '.join(beyond)}; "
                f"starting over would overwrite them. Write the newest complete epoch "
                f"folder's name (e.g. {beyond[-1]}) into {LATEST_FILE}, or start over with "
                "--overwrite."
            )
    return latest


def _ensure_writable_directory(path):
    """Create `path` if needed and prove it is a writable directory."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"run directory {path} is a file; pass another --run-dir.")
    probe = os.path.join(path, f".write-test-{os.getpid()}")
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
        reason = error.strerror or str(error)
        raise UserError(
            f"cannot write to run directory {path} ({reason}); pass a writable --run-dir."
        ) from None


def _lock(path):
    """Take an exclusive lock on the run directory so two processes never share one."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.EAGAIN, errno.EACCES):
            raise UserError(
                f"run directory {path} is in use by another training process; "
                "wait for it to finish or pass another --run-dir."
            ) from None
        raise
    return fd


def _remove_run_outputs(path, keep=()):
    """Delete what this program wrote into `path` but the names in `keep` (used by
    --overwrite only); returns the names removed."""
    removed = []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if name in keep or not _own_entry(name):
            continue
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        else:
            os.remove(full)
        removed.append(name)
    return removed


def _own_entry(name):
    """Whether `name` is one this program gives to what it writes into a run directory
    (results and its own temporary names; nothing else, so a user's files never match)."""
    return (name in RUN_FILES or bool(EPOCH_DIR_PATTERN.match(name))
            or bool(STALE_TEMPORARY.match(name)) or bool(WRITE_PROBE.match(name)))


WRITE_PROBE = re.compile(r"^\.write-test-\d+$")


def _read_config(config_path):
    """config.json as a dict; None when the file is not one this program wrote (a user's
    own config.json has other keys). Raises `UserError` when it cannot be parsed."""
    try:
        with open(config_path, encoding="utf-8") as handle:
            saved = json.load(handle)
    except (OSError, ValueError) as error:
        raise UserError(
            f"{config_path} is unreadable ({error}); fix it, pass another --run-dir, "
            "or start over with --overwrite."
        ) from None
    if isinstance(saved, dict) and {"model", "seed", "batch_size", "epochs"} <= saved.keys():
        return saved
    return None


# Only this program's own temporary names: a user's files are never matched.
STALE_TEMPORARY = re.compile(
    r"^(?:\.epoch_\d{4,}(?:\.stale-\d+)?\.partial|(?:"
    + "|".join(re.escape(name) for name in RUN_FILES)
    + r")\.tmp-\d+)$"
)


def remove_stale_partials(path):
    """Delete half-written epoch folders and temporary files left by a killed run.

    They are never results: a folder or file only gets its final name once it is
    complete. Returns the names removed.
    """
    removed = []
    for name in sorted(os.listdir(path)):
        if not STALE_TEMPORARY.match(name):
            continue
        full = os.path.join(path, name)
        if os.path.isdir(full):
            shutil.rmtree(full)
        else:
            os.remove(full)
        removed.append(name)
    return removed


def dir_setting(config):
    """Open (creating if needed) the run directory of `config`.

    Returns a locked `RunDirectory`; with --overwrite it reads nothing of the earlier run
    and leaves its removal to `RunDirectory.clear_earlier_results`. Raises `UserError` for
    a run directory that is a file, cannot be written, is in use, holds other files but
    no run, or whose LATEST file disagrees with its epoch folders.
    """
    path = config.resolved_run_dir()
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
        entries = os.listdir(path)
        config_path = os.path.join(path, CONFIG_FILE)
        saved_config, damaged = None, False
        if os.path.exists(config_path):
            try:
                saved_config = _read_config(config_path)
            except UserError:
                if not config.overwrite:
                    raise
                damaged = True  # a run whose config.json broke: --overwrite may clear it
        if saved_config is None:
            # Not (recognisably) a run: only an empty folder, or one holding nothing but
            # this program's files, may be used; a user's files are never touched.
            listed = sorted(name for name in entries if not STALE_TEMPORARY.match(name)
                            and not WRITE_PROBE.match(name))
            foreign = [name for name in listed if not _own_entry(name)
                       or (name == CONFIG_FILE and not damaged)]
            if foreign:
                shown = ", ".join(listed[:6]) + (", ..." if len(listed) > 6 else "")
                raise UserError(
                    f"run directory {path} is not empty and holds no run of this program "
                    f"({shown}); pass a new or empty --run-dir.")
            if listed and not config.overwrite:
                raise UserError(
                    f"{path} holds files of a run ({', '.join(listed[:6])}) but no "
                    f"{CONFIG_FILE}; pass another --run-dir or start over with --overwrite.")
        if config.overwrite:
            # Nothing of the earlier run is read (it may be damaged) or removed yet.
            return RunDirectory(path, 0, None, lock_fd, overwrite_pending=True,
                                created=tuple(created))
        latest_epoch = continue_setting(path)
        return RunDirectory(path, latest_epoch, saved_config, lock_fd, created=tuple(created))
    except BaseException:
        _remove_empty(created)
        os.close(lock_fd)
        raise


def config_record(config, data_info, model_name, versions):
    """The dictionary saved as config.json: settings, data source and library versions."""
    record = dataclasses.asdict(config)
    record["run_dir"] = config.resolved_run_dir()
    record.pop("overwrite")
    record["model"] = model_name
    record["data_source"] = data_info["source"]
    record["data_description"] = data_info["description"]
    record["data_fingerprint"] = data_info["fingerprint"]
    record["num_train"] = data_info["num_train"]
    record["num_validation"] = data_info["num_validation"]
    record["num_test"] = data_info["num_test"]
    record["class_names"] = list(data_info["class_names"])
    record["versions"] = versions
    return record


def config_differences(saved, current):
    """The result-changing settings that differ, as 'name: old -> new' lines.

    Only names present in `current` are compared, so a partial record (the command-line
    settings, before the data is loaded) can be checked early.
    """
    differences = []
    for name in RESULT_SETTINGS:
        if name not in current:
            continue
        old, new = saved.get(name, SAVED_DEFAULTS.get(name)), current[name]
        if old == new:
            continue
        if name == "data_fingerprint":  # a hash alone says nothing: say which data
            differences.append(f"data: {_data_summary(saved)} -> {_data_summary(current)}")
        else:
            differences.append(f"{name}: {old!r} -> {new!r}")
    return differences


def _data_summary(record):
    """Which data a config record was made with, e.g. "IDX files in /data/mnist, 60,000
    training and 10,000 test images (fingerprint 1e35a0f2)"."""
    words = record.get("data_description", "data")
    counts = [record.get(key) for key in ("num_train", "num_validation", "num_test")]
    if None not in counts:
        words += f", {counts[0] + counts[1]:,} training and {counts[2]:,} test images"
    return f"{words} (fingerprint {str(record.get('data_fingerprint'))[:8]})"


# Entries of "versions" that older config.json files lack and whose old value is unknown
# (the device: earlier runs recorded none), so their absence is not reported as a change.
RECORDED_LATER = ("device",)


def version_differences(saved, current):
    """The library versions and kernels setting that differ between two config records,
    as 'name old -> new' strings. They do not stop a resume (the run continues correctly)
    but end bit-identity with a run that never stopped."""
    old, new = saved.get("versions") or {}, current.get("versions") or {}
    return [f"{name} {old.get(name, 'unrecorded')} -> {new[name]}"
            for name in new
            if old.get(name, "unrecorded") != new[name]
            and not (name in RECORDED_LATER and name not in old)]


def _version(model_name):
    """The architecture version of a recorded model name: 'convnet-v4' -> 'v4',
    'convnet-v7-mixed' -> 'v7'."""
    match = re.search(r"-(v\d+)(?:-mixed)?$", model_name)
    return match.group(1) if match else model_name.rsplit("-", 1)[-1]


def check_compatible(run_directory, record):
    """Refuse to continue a run whose saved settings differ from this invocation's.

    `record` may be partial (see `config_differences`).
    """
    if run_directory.saved_config is None:
        return
    differences = config_differences(run_directory.saved_config, record)
    saved_model, model = run_directory.saved_config.get("model"), record.get("model")
    if saved_model and model and _version(saved_model) != _version(model):
        raise UserError(
            f"{run_directory.path} was made by another version of this program (network "
            f"{saved_model}, this version trains {model}), so it cannot be resumed; its "
            "results stay as they are. Pass another --run-dir, or start over with --overwrite."
        )
    if differences:
        raise UserError(
            f"{run_directory.path} was made with other settings ("
            + "; ".join(differences)
            + "). Rerun with the old settings, pass another --run-dir, "
            "or start over with --overwrite."
        )
