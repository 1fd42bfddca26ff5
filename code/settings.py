"""The recipe: every setting of a run (`Config`), the named presets, and the checks of each value.

A `Config` is checked when it is made (`Config.__post_init__`), so every one that exists
is valid; the error names the flag and the bad value, and `main.py` prints it as one line.
The choices offered for models, optimizers, schedules, precisions and datasets are the
keys and tuples defined here and nowhere else. This module imports no TensorFlow, so the
command line is checked before TensorFlow's slow start.
"""

import dataclasses
import math

from basic_utils import UserError

DATASETS = ("mnist", "fashion_mnist")
# The networks by name, with their hyperparameters; `model.build_model` builds them.
MODELS = {
    # A 5x5 stride-2 stem, stages of 3x3 convolutions with max-pooling, dropout, one dense
    # layer (model.MnistClassifier).
    "convnet": {"stem": 24, "stages": ((32,), (64, 64)), "dropout": 0.3},
    "convnet-fast": {"stem": 32, "stages": ((), (64,)), "dropout": 0.0},
    # The original project's network (model.SeedClassifier), which has no hyperparameters.
    "seed": None,
}
# --optimizer -> the Keras optimizer class it names (keras.optimizers.<class>).
OPTIMIZERS = {"adam": "Adam", "sgd": "SGD"}
SCHEDULES = ("one-cycle", "constant")
# float32 throughout, or float16 arithmetic with float32 weights and loss scaling
# ("mixed"); "auto" is resolved by `resolve_precision` before a run starts.
PRECISIONS = ("auto", "float32", "mixed")
# How the steps spread over devices (distribution.py): one device; tf.distribute's
# MirroredStrategy over this machine's GPUs (or --devices); MultiWorkerMirroredStrategy
# over the machines TF_CONFIG names.
DISTRIBUTE = ("none", "mirrored", "multi-worker")

# Named bundles of the settings that make a recipe. A flag given on the command line
# overrides its preset's value.
PRESETS = {
    # The most accurate recipe: the four-convolution batch-normalised network, augmentation
    # (off for the last two epochs), Adam with a one-cycle schedule, a weight average.
    "standard": {
        "model": "convnet", "epochs": 20, "batch_size": 128, "optimizer": "adam",
        "learning_rate": 3e-3, "schedule": "one-cycle", "validation_fraction": 0.1,
        "augment": True, "clean_epochs": 2, "weight_average": 0.999,
    },
    # A short recipe: the smaller network for two epochs, without augmentation.
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
# Settings that change what a run computes: a run directory refuses to continue with other
# values (run_record.check_compatible). `epochs` may change (the run is extended), and the
# preset's name does not count, only the values it produced.
RESULT_SETTINGS = (
    "model", "batch_size", "optimizer", "learning_rate", "schedule", "seed",
    "validation_fraction", "dataset", "augment", "clean_epochs", "weight_average",
    "deterministic", "precision",
)


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a run; saved in config.json and inside every checkpoint.

    The recipe fields have no defaults here: `make_config` takes them from a preset.
    """

    preset: str
    model: str
    epochs: int
    batch_size: int
    optimizer: str
    learning_rate: float
    schedule: str
    validation_fraction: float
    augment: bool
    clean_epochs: int
    weight_average: float
    seed: int = 0
    dataset: str = "mnist"
    deterministic: bool = True
    precision: str = "auto"
    xla: bool = False
    distribute: str = "none"
    devices: str | None = None  # --devices for mirrored, e.g. "GPU:0,GPU:1" or "CPU:0,CPU:1"
    checkpoint_every_steps: int = 250
    data_dir: str | None = None
    run_dir: str | None = None
    overwrite: bool = False
    quiet: bool = False

    def __post_init__(self):
        _check_choice("--preset", self.preset, PRESETS)
        _check_choice("--model", self.model, MODELS)
        _check_choice("--optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("--schedule", self.schedule, SCHEDULES)
        _check_choice("--precision", self.precision, PRECISIONS)
        _check_choice("--dataset", self.dataset, DATASETS)
        _check_choice("--distribute", self.distribute, DISTRIBUTE)
        _check_integer("--epochs", self.epochs, minimum=1)
        _check_integer("--batch-size", self.batch_size, minimum=1)
        _check_integer("--clean-epochs", self.clean_epochs, minimum=0)
        # The largest seed NumPy and TensorFlow's global generators take.
        _check_integer("--seed", self.seed, minimum=0, maximum=2 ** 32 - 1)
        _check_integer("--checkpoint-every-steps", self.checkpoint_every_steps, minimum=0)
        _check_number("--learning-rate", self.learning_rate,
                      lambda value: 0 < value < math.inf, "a positive number")
        _check_number("--validation-fraction", self.validation_fraction,
                      lambda value: 0 < value < 1, "a number between 0 and 1 (exclusive)")
        _check_number("--weight-average", self.weight_average, lambda value: 0 <= value < 1,
                      "a number from 0 (off) up to, not including, 1")
        for flag, path in (("--data-dir", self.data_dir), ("--run-dir", self.run_dir)):
            if path is not None and not path.strip():
                raise UserError(f"{flag} is empty; pass a folder (or leave the flag out).")
        if self.devices is not None:
            parse_devices(self.devices)
            if self.distribute != "mirrored":
                raise UserError(f"--devices is for --distribute mirrored (this run has "
                                f"--distribute {self.distribute}); leave it out or pass "
                                "--distribute mirrored.")
        if self.xla and self.distribute != "none":
            # XLA compiles the step as one graph, and a tf.distribute step makes calls
            # across replicas (merge_call) that a compiled graph cannot hold: TensorFlow
            # fails with "merge_call called while defining a new graph".
            raise UserError(f"--xla cannot be combined with --distribute {self.distribute}: "
                            "TensorFlow cannot compile a distributed step with XLA; leave "
                            "out --xla.")
        if self.xla and self.deterministic:
            raise UserError(
                "--xla needs --no-determinism: XLA has no deterministic gradient of "
                "max-pooling, so TensorFlow refuses to compile the training step while op "
                "determinism is on.")


def parse_devices(text):
    """The device names of --devices ("GPU:0,GPU:1", "CPU:0,CPU:1", case as given) as a
    tuple of (kind, index), kind "CPU" or "GPU"; raises `UserError` for anything else."""
    devices = []
    for name in text.split(","):
        kind, _, index = name.strip().upper().partition(":")
        if kind not in ("CPU", "GPU") or not index.isdigit():
            raise UserError(f"--devices must list devices such as GPU:0,GPU:1 or "
                            f"CPU:0,CPU:1, got {text!r}.")
        devices.append((kind, int(index)))
    if len(set(devices)) != len(devices):
        raise UserError(f"--devices names a device twice: {text!r}.")
    if len({kind for kind, _ in devices}) > 1:
        raise UserError(f"--devices mixes CPUs and GPUs ({text!r}); list one kind.")
    return tuple(devices)


def _check_choice(flag, value, choices):
    if value not in choices:
        raise UserError(f"unknown {flag} {value!r}; choose one of {', '.join(choices)}.")


def _check_integer(flag, value, minimum, maximum=None):
    if (isinstance(value, bool) or not isinstance(value, int) or value < minimum
            or (maximum is not None and value > maximum)):
        if maximum is not None:
            wanted = f"an integer from {minimum} to {maximum}"
        elif minimum == 1:
            wanted = "a positive integer"
        else:
            wanted = f"an integer of at least {minimum}"
        raise UserError(f"{flag} must be {wanted}, got {value!r}.")


def _check_number(flag, value, accept, wanted):
    # NaN fails every comparison, so it is refused along with out-of-range values.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not accept(value):
        raise UserError(f"{flag} must be {wanted}, got {value!r}.")


def make_config(preset="standard", **settings):
    """The `Config` of `preset`, with `settings` (the flags given) overriding its values."""
    _check_choice("--preset", preset, PRESETS)
    return Config(preset=preset, **{**PRESETS[preset], **settings})


def first_clean_epoch(config):
    """The first (1-based) epoch that trains on the images as they are, or None when every
    epoch is augmented or none is (`--clean-epochs` counts back from `--epochs`, so
    extending a run moves the clean epochs to its new end)."""
    if not (config.augment and config.clean_epochs):
        return None
    return max(1, config.epochs - config.clean_epochs + 1)


def describe_augmentation(config):
    """The run's augmentation in words, e.g. 'on (off in the last 2 epochs)'."""
    if not config.augment:
        return "off"
    clean_from = first_clean_epoch(config)
    if clean_from is None:
        return "on"
    if clean_from == 1:
        return f"off (--clean-epochs {config.clean_epochs} covers all {config.epochs} epochs)"
    return f"on (off in the last {config.clean_epochs} epochs)"


def resolve_precision(requested, saved_precision, gpu_available):
    """The precision a run trains in: 'float32' or 'mixed'.

    An explicit choice wins (a resumed run then refuses a change, as for any setting).
    'auto' keeps what a resumed run was trained in (`saved_precision`, None for a new
    run), else picks mixed precision where a GPU computes (its tensor cores work in
    float16) and float32 on CPUs, which compute float16 slowly (benchmarks/RESULTS.md).
    """
    if requested != "auto":
        return requested
    if saved_precision is not None:
        return saved_precision
    return "mixed" if gpu_available else "float32"
