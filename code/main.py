"""Command line: parse the flags into one `Config`, then run the per-epoch training loop.

    python code/main.py                           # full MNIST, resumes if interrupted
    python code/main.py --data-dir ../shared/data/mnist --epochs 20
    python code/main.py --preset fast             # 99 % in under half a minute of training

Errors the user can fix end with one line on stderr and exit code 2, never a traceback.
"""

import argparse
import math
import sys

import basic_utils

# Before anything imports TensorFlow: oneDNN kernels on, C++ start-up notes off.
basic_utils.set_tensorflow_environment()

import learning_env_setting  # noqa: E402

DEFAULTS = learning_env_setting.Config()


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are a single line with a pointer to --help, exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}. See --help.\n")


def _converter(parse, accept, expected):
    """An argparse `type` that parses with `parse` and keeps values `accept` allows."""

    def convert(text):
        try:
            value = parse(text)
        except ValueError:
            value = None
        # NaN fails every comparison, so it is rejected along with out-of-range values.
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return convert


_positive_int = _converter(int, lambda value: value > 0, "a positive integer")
_non_negative_int = _converter(int, lambda value: value >= 0, "0 or a positive integer")
_positive_float = _converter(float, lambda value: 0 < value < math.inf, "a positive number")
_fraction = _converter(float, lambda value: 0 < value < 1,
                       "a number between 0 and 1 (exclusive)")
_decay = _converter(float, lambda value: 0 <= value < 1, "a number from 0 up to (not including) 1")


def _preset_help(name):
    """'(standard: 20, fast: 2, seed: 50)' for a preset-controlled setting."""
    values = ", ".join(
        f"{preset}: {settings[name]}" for preset, settings in learning_env_setting.PRESETS.items()
    )
    return f"({values})"


def build_parser():
    parser = OneLineParser(
        prog="main.py",
        description="Train a convolutional MNIST classifier; rerun the same command to resume.",
        epilog="Presets: standard (default) is the most accurate recipe (about 10 minutes on "
               "two CPU cores); fast reaches 99% test accuracy in under half a minute of "
               "training; seed is the original project's recipe, for comparison. A flag "
               "given explicitly overrides the preset's value.",
    )
    # Flags a preset sets default to None, so that only the ones the user typed override
    # the preset (parse_config drops the Nones).
    keep = None
    parser.add_argument("--preset", choices=tuple(learning_env_setting.PRESETS),
                        default=DEFAULTS.preset,
                        help="named recipe: model, epochs, batch size, optimizer, learning "
                             "rate and schedule, validation fraction, augmentation, clean "
                             "epochs, weight average (default: %(default)s)")
    parser.add_argument("--model", choices=learning_env_setting.MODELS, default=keep,
                        help="network " + _preset_help("model"))
    parser.add_argument("--epochs", type=_positive_int, default=keep,
                        help="total epochs of the run; a larger value extends a finished run "
                             "(a one-cycle schedule is then re-planned over the new length) "
                             + _preset_help("epochs"))
    parser.add_argument("--batch-size", type=_positive_int, default=keep,
                        help="training batch size " + _preset_help("batch_size"))
    parser.add_argument("--optimizer", choices=learning_env_setting.OPTIMIZERS, default=keep,
                        help="optimizer " + _preset_help("optimizer"))
    parser.add_argument("--learning-rate", type=_positive_float, default=keep,
                        help="peak (one-cycle) or constant learning rate "
                             + _preset_help("learning_rate"))
    parser.add_argument("--schedule", choices=learning_env_setting.SCHEDULES, default=keep,
                        help="learning-rate schedule: one-cycle rises over the first 20%% of "
                             "the steps, then falls along a cosine to almost zero "
                             + _preset_help("schedule"))
    parser.add_argument("--validation-fraction", type=_fraction, default=keep,
                        help="fraction of the training split held out for validation "
                             + _preset_help("validation_fraction"))
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=keep,
                        help="training augmentation: small random rotation, zoom and shift "
                             + _preset_help("augment"))
    parser.add_argument("--clean-epochs", type=_non_negative_int, default=keep, metavar="N",
                        help="with augmentation on, train the last N epochs on the images as "
                             "they are " + _preset_help("clean_epochs"))
    parser.add_argument("--weight-average", type=_decay, default=keep, metavar="DECAY",
                        help="validate and test with an exponential moving average of the "
                             "weights that keeps DECAY of itself each step; 0 uses the raw "
                             "weights " + _preset_help("weight_average"))
    parser.add_argument("--seed", type=_non_negative_int, default=DEFAULTS.seed,
                        help="seed of weights, validation split, data order and augmentation (default: %(default)s)")
    parser.add_argument("--dataset", choices=learning_env_setting.DATASETS,
                        default=DEFAULTS.dataset, help="tensorflow-datasets name (default: %(default)s)")
    parser.add_argument("--no-determinism", dest="deterministic", action="store_false",
                        help="allow TensorFlow's non-deterministic kernels (faster on some GPUs; "
                             "runs are then not bit-reproducible)")
    parser.add_argument("--precision", choices=learning_env_setting.PRECISIONS,
                        default=DEFAULTS.precision,
                        help="float32, or mixed: float16 arithmetic with float32 weights and "
                             "loss scaling, for GPUs; auto picks mixed when TensorFlow sees a "
                             "GPU and float32 otherwise, and keeps a resumed run's precision "
                             "(default: %(default)s)")
    parser.add_argument("--xla", action="store_true",
                        help="compile the steps with XLA (for GPUs; slower on CPUs); needs "
                             "--no-determinism")
    parser.add_argument("--checkpoint-every-steps", type=_non_negative_int,
                        default=DEFAULTS.checkpoint_every_steps,
                        help="also checkpoint inside an epoch every N training steps, so an "
                             "interruption loses at most N steps; 0 turns it off "
                             "(default: %(default)s)")
    parser.add_argument("--data-dir", default=None,
                        help="folder with the four IDX files (.gz or raw) instead of downloading")
    parser.add_argument("--run-dir", default=None,
                        help="where the run lives (default: runs/<dataset> in the current folder)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in an existing run directory, deleting its results")
    return parser


def parse_config(arguments):
    """The `Config` of the command-line `arguments` (a list without the program name)."""
    settings = vars(build_parser().parse_args(arguments))
    return learning_env_setting.make_config(
        **{name: value for name, value in settings.items() if value is not None}
    )


def main(arguments=None):
    arguments = sys.argv[1:] if arguments is None else list(arguments)
    config = parse_config(arguments)
    try:
        learning_env_setting.validate_config(config)
        import training_loop  # imported here so bad flags are rejected before TensorFlow loads

        return training_loop.run(config, arguments=arguments, script=sys.argv[0] or "code/main.py")
    except basic_utils.UserError as error:
        print(f"main.py: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Without --overwrite: rerunning with it would start over instead of resuming.
        command = basic_utils.resume_command(sys.argv[0] or "code/main.py", arguments)
        print(f"\nInterrupted. Completed epochs are kept; resume with: {command}",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
