"""Command line: parse the flags into one `Config`, then run the per-epoch training loop.

    python code/main.py                           # full MNIST, resumes if interrupted
    python code/main.py --data-dir ../shared/data/mnist --epochs 12

Errors the user can fix end with one line on stderr and exit code 2, never a traceback.
"""

import argparse
import math
import os
import sys

# Keep TensorFlow's C++ start-up chatter (CUDA probing, CPU feature notes) off the console.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import basic_utils  # noqa: E402  (TF_CPP_MIN_LOG_LEVEL must be set first)
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
_decay = _converter(float, lambda value: 0 < value <= 1, "a number in (0, 1]")


def build_parser():
    parser = OneLineParser(
        prog="main.py",
        description="Train a convolutional MNIST classifier; rerun the same command to resume.",
    )
    parser.add_argument("--epochs", type=_positive_int, default=DEFAULTS.epochs,
                        help="total epochs of the run; a larger value extends a finished run (default: %(default)s)")
    parser.add_argument("--batch-size", type=_positive_int, default=DEFAULTS.batch_size,
                        help="training batch size (default: %(default)s)")
    parser.add_argument("--learning-rate", type=_positive_float, default=DEFAULTS.learning_rate,
                        help="Adam's initial learning rate (default: %(default)s)")
    parser.add_argument("--lr-decay", type=_decay, default=DEFAULTS.lr_decay,
                        help="factor the learning rate is multiplied by per epoch (smoothly) (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed,
                        help="seed of weights, validation split, data order and augmentation (default: %(default)s)")
    parser.add_argument("--validation-fraction", type=_fraction,
                        default=DEFAULTS.validation_fraction,
                        help="fraction of the training split held out for validation (default: %(default)s)")
    parser.add_argument("--dataset", choices=learning_env_setting.DATASETS,
                        default=DEFAULTS.dataset, help="tensorflow-datasets name (default: %(default)s)")
    parser.add_argument("--no-augment", dest="augment", action="store_false",
                        help="turn off training augmentation (small random rotation, zoom and shift; on by default)")
    parser.add_argument("--no-determinism", dest="deterministic", action="store_false",
                        help="allow TensorFlow's non-deterministic kernels (faster on some GPUs; "
                             "runs are then not bit-reproducible)")
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
    namespace = build_parser().parse_args(arguments)
    return learning_env_setting.Config(**vars(namespace))


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
        print("\nInterrupted. Completed epochs are kept; rerun the same command to resume.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
