"""config.json: the record of what a run is (settings, data, format, library versions), and the
rule for which later invocations may continue it.

A run directory keeps one record. An invocation that would compute something else than
the run so far (another setting in `settings.RESULT_SETTINGS`, other data, another format
of this program) is refused with every difference listed; other library versions or
kernels only earn a note, since the run then continues correctly but not bit-identically.
This module imports no TensorFlow.
"""

import dataclasses
import json

import settings
from basic_utils import UserError

PROGRAM = "mnist-trainer"
# What this program writes into a run directory (config.json, checkpoints, folder names).
# A run directory of any other format is refused, never converted.
FORMAT_VERSION = 1
# The data a record's results depend on; compared like the result settings.
DATA_KEYS = ("data_source", "data_fingerprint")


def make_record(config, data_info, versions):
    """The dictionary saved as config.json: settings, data source and library versions."""
    record = dataclasses.asdict(config)
    # How this invocation started and what it prints, not what the run is.
    record.pop("overwrite")
    record.pop("quiet")
    record.update(
        program=PROGRAM,
        format_version=FORMAT_VERSION,
        data_source=data_info["source"],
        data_description=data_info["description"],
        data_fingerprint=data_info["fingerprint"],
        num_train=data_info["num_train"],
        num_validation=data_info["num_validation"],
        num_test=data_info["num_test"],
        class_names=list(data_info["class_names"]),
        versions=versions,
    )
    return record


def config_from_record(record, **overrides):
    """The `settings.Config` a record was made with (its precision already resolved), with
    `overrides` (such as another data_dir) where they are not None."""
    fields = {field.name for field in dataclasses.fields(settings.Config)}
    values = {name: value for name, value in record.items() if name in fields}
    values.update({name: value for name, value in overrides.items() if value is not None})
    return settings.Config(**values)


def read_record(path):
    """The record saved at `path`; None when the file is not one this program wrote (a
    user's own config.json). Raises `UserError` when the file cannot be parsed."""
    try:
        with open(path, encoding="utf-8") as handle:
            saved = json.load(handle)
    except (OSError, ValueError) as error:
        raise UserError(
            f"{path} is unreadable ({error}); fix it, pass another --run-dir, or start "
            "over with --overwrite.") from None
    if not isinstance(saved, dict):
        return None
    # Versions of this program before FORMAT_VERSION wrote no "program" key, but these
    # four: such a directory is recognised as a run, so that it can be refused clearly.
    if saved.get("program") == PROGRAM or {"model", "seed", "batch_size", "epochs"} <= saved.keys():
        return saved
    return None


def differences(saved, current):
    """The result settings and data that differ between two records, as 'name: old -> new'."""
    changed = []
    for name in settings.RESULT_SETTINGS:
        if saved[name] != current[name]:
            changed.append(f"{name}: {saved[name]!r} -> {current[name]!r}")
    if any(saved[name] != current[name] for name in DATA_KEYS):
        changed.append(f"data: {describe_data(saved)} -> {describe_data(current)}")
    return changed


def describe_data(record):
    """Which data a record was made with, e.g. "IDX files in /data/mnist, 60,000 training
    and 10,000 test images (fingerprint 1e35a0f2)"."""
    return (f"{record['data_description']}, "
            f"{record['num_train'] + record['num_validation']:,} training and "
            f"{record['num_test']:,} test images "
            f"(fingerprint {record['data_fingerprint'][:8]})")


def version_differences(saved, current):
    """The library versions, kernels setting and device that differ, as 'name old -> new'.

    They do not stop a resume (the run continues correctly), but end bit-identity with a
    run that never stopped.
    """
    old, new = saved["versions"], current["versions"]
    return [f"{name} {old.get(name, 'unrecorded')} -> {value}"
            for name, value in new.items() if old.get(name, "unrecorded") != value]


# What a record without a "distribution" entry (made before --distribute) was trained on.
ONE_DEVICE = {"strategy": "none", "replicas": 1, "workers": 1}


def carry_distribution(saved, current, completed_epochs):
    """Put into record `current` the distribution changes of record `saved` (a resumed
    run's), and this invocation's own if its distribution differs from the saved one
    (after `completed_epochs`); returns the change in words, or None when there is none.

    A run may continue on another replica count or strategy: the state it restores does
    not depend on either, but the sums add up in another order (and batch normalisation
    sees other slices), so its numbers differ slightly from a run that never changed."""
    before = saved.get("distribution", ONE_DEVICE)
    changes = list(saved.get("distribution_changes", []))
    after = current["distribution"]
    if before != after:
        changes.append({"after_epoch": completed_epochs, "from": before, "to": after})
    if changes:
        current["distribution_changes"] = changes
    if before == after:
        return None
    return (f"{describe_distribution(before)} -> {describe_distribution(after)}")


def describe_distribution(entry):
    """A record's distribution in words, e.g. 'mirrored, 2 replicas'."""
    replicas = entry["replicas"]
    words = f"{entry['strategy']}, {replicas} replica{'' if replicas == 1 else 's'}"
    if entry.get("workers", 1) > 1:
        words += f" on {entry['workers']} workers"
    return words


def check_compatible(path, saved, current):
    """Refuse to continue the run in `path` (record `saved`) with record `current`."""
    if saved.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path} was made by another version of this program (format "
            f"{saved.get('format_version', 'unrecorded')}; this version reads format "
            f"{FORMAT_VERSION}), so it cannot be resumed; its results stay as they are. "
            "Pass another --run-dir, or start over with --overwrite.")
    changed = differences(saved, current)
    if changed:
        raise UserError(
            f"{path} was made with other settings ({'; '.join(changed)}). Rerun with the "
            "old settings, pass another --run-dir, or start over with --overwrite.")
