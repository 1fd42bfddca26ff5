"""Command line: parse the flags into one `Config`, then run the per-epoch training loop; or run
the `predict` and `evaluate` commands on a trained run.

    python code/main.py                           # MNIST, standard preset; resumes if interrupted
    python code/main.py --data-dir ../shared/data/mnist --preset fast
    python code/main.py predict --run-dir RUN digit.png
    python code/main.py evaluate --run-dir RUN [--epoch N]

Errors the user can fix end with one line on stderr and exit code 2, never a traceback.
"""

import argparse
import sys

import basic_utils

# Before anything imports TensorFlow: oneDNN kernels on, C++ log messages off.
basic_utils.set_tensorflow_environment()

import dataset_utils  # noqa: E402  (imports no TensorFlow)
import distribution  # noqa: E402  (imports no TensorFlow)
import settings  # noqa: E402


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are a single line with a pointer to --help, exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}. See --help.\n")


def _number(parse, expected):
    """An argparse `type` that only parses; `settings.Config` checks the value's range."""

    def convert(text):
        try:
            return parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None

    return convert


def _preset_help(name):
    """'(standard: 20, fast: 2, seed: 50)' for a preset-controlled setting."""
    return "(" + ", ".join(f"{preset}: {values[name]}"
                           for preset, values in settings.PRESETS.items()) + ")"


def _choices(names):
    return "{" + ",".join(names) + "}"


def build_parser():
    parser = OneLineParser(
        prog="main.py",
        usage="%(prog)s [options]  (train; rerun to resume)\n"
              "       %(prog)s predict --run-dir RUN IMAGE [IMAGE ...] [options]\n"
              "       %(prog)s evaluate --run-dir RUN [--epoch N] [options]",
        description="Train a convolutional MNIST classifier; rerun the same command to resume.",
        epilog="Presets: standard (default) is the most accurate recipe; fast trains a "
               "smaller network for two epochs; seed is the original project's recipe, for "
               "comparison. A flag given explicitly overrides the preset's value. Results: "
               "benchmarks/RESULTS.md. A trained run's model: 'main.py predict --help' "
               "classifies your own images, 'main.py evaluate --help' re-evaluates an epoch "
               "on the test split.",
    )
    integer, number = _number(int, "an integer"), _number(float, "a number")
    # Flags a preset sets default to None, so that only the ones the user typed override
    # the preset (parse_config drops the Nones).
    keep = None
    parser.add_argument("--preset", default="standard", metavar=_choices(settings.PRESETS),
                        help="named recipe: model, epochs, batch size, optimizer, learning "
                             "rate and schedule, validation fraction, augmentation, clean "
                             "epochs, weight average (default: %(default)s)")
    parser.add_argument("--model", default=keep, metavar=_choices(settings.MODELS),
                        help="network " + _preset_help("model"))
    parser.add_argument("--epochs", type=integer, default=keep,
                        help="total epochs of the run; a larger value extends a finished run "
                             "(a one-cycle schedule is then re-planned over the new length, "
                             "and the clean epochs move to its end) "
                             + _preset_help("epochs"))
    parser.add_argument("--batch-size", type=integer, default=keep,
                        help="training batch size " + _preset_help("batch_size"))
    parser.add_argument("--optimizer", default=keep, metavar=_choices(settings.OPTIMIZERS),
                        help="optimizer " + _preset_help("optimizer"))
    parser.add_argument("--learning-rate", type=number, default=keep,
                        help="peak (one-cycle) or constant learning rate "
                             + _preset_help("learning_rate"))
    parser.add_argument("--schedule", default=keep, metavar=_choices(settings.SCHEDULES),
                        help="learning-rate schedule: one-cycle rises over the first 20%% of "
                             "the steps, then falls along a cosine to almost zero "
                             + _preset_help("schedule"))
    parser.add_argument("--validation-fraction", type=number, default=keep,
                        help="fraction of the training split held out for validation "
                             + _preset_help("validation_fraction"))
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=keep,
                        help="training augmentation: small random rotation, zoom and shift "
                             + _preset_help("augment"))
    parser.add_argument("--clean-epochs", type=integer, default=keep, metavar="N",
                        help="with augmentation on, train the last N epochs on the images as "
                             "they are " + _preset_help("clean_epochs"))
    parser.add_argument("--weight-average", type=number, default=keep, metavar="DECAY",
                        help="validate and test with an exponential moving average of the "
                             "weights that keeps DECAY of itself each step; 0 uses the raw "
                             "weights " + _preset_help("weight_average"))
    parser.add_argument("--seed", type=integer, default=keep,
                        help="seed of weights, validation split, data order and augmentation "
                             "(default: 0)")
    parser.add_argument("--dataset", default=keep, metavar=_choices(settings.DATASETS),
                        help="tensorflow-datasets name (default: mnist)")
    parser.add_argument("--no-determinism", dest="deterministic", action="store_false",
                        default=keep,
                        help="allow TensorFlow's non-deterministic kernels (faster on some "
                             "GPUs; runs are then not bit-reproducible)")
    parser.add_argument("--precision", default=keep, metavar=_choices(settings.PRECISIONS),
                        help="float32, or mixed: float16 arithmetic with float32 weights and "
                             "loss scaling, for GPUs; auto picks mixed when TensorFlow sees a "
                             "GPU and float32 otherwise, and keeps a resumed run's precision "
                             "(default: auto)")
    parser.add_argument("--xla", action="store_true", default=keep,
                        help="compile the steps with XLA (for GPUs; slower on CPUs); needs "
                             "--no-determinism")
    parser.add_argument("--distribute", default=keep, metavar=_choices(settings.DISTRIBUTE),
                        help="spread each batch over devices with tf.distribute: mirrored "
                             "uses this machine's GPUs (or --devices); multi-worker the "
                             "machines of the TF_CONFIG variable, one process each, where "
                             "worker 0 writes the run directory (default: none)")
    parser.add_argument("--devices", default=keep, metavar="LIST",
                        help="with --distribute mirrored, the devices to use, e.g. "
                             "GPU:0,GPU:1; CPU:0,CPU:1 splits the CPU into logical devices "
                             "(default: every GPU)")
    parser.add_argument("--checkpoint-every-steps", type=integer, default=keep, metavar="N",
                        help="also checkpoint inside an epoch every N training steps, so an "
                             "interruption loses at most N steps; 0 turns it off "
                             "(default: 250)")
    parser.add_argument("--data-dir", default=keep,
                        help="folder with the four IDX files (.gz or raw) instead of "
                             "tensorflow-datasets")
    parser.add_argument("--run-dir", default=keep,
                        help="where the run lives (default: runs/<dataset>-<preset>-<data "
                             "source> in the current folder)")
    parser.add_argument("--overwrite", action="store_true", default=keep,
                        help="start over in an existing run directory, deleting its results")
    parser.add_argument("--quiet", action="store_true", default=keep,
                        help="print only each epoch's results and the final line (no "
                             "progress bar, no start-up notes; warnings still go to stderr)")
    return parser


def build_predict_parser():
    parser = OneLineParser(
        prog="main.py predict",
        description="Classify your own digit images with a run's best model (best/): PNG, "
                    "JPEG or any image Pillow reads, any size, colour or grey; dark ink on "
                    "light paper or light on dark is detected. Each is prepared as MNIST's digits were (its ink "
                    "scaled into 20x20, centred by centre of mass in 28x28).",
        epilog="Exit code 1 when an image could not be read (the others are still "
               "classified), 2 for a bad command.")
    parser.add_argument("--run-dir", required=True, help="the run whose best model classifies")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--top-k", type=_number(int, "an integer"), default=1, metavar="K",
                        help="show the K most probable classes (default: %(default)s)")
    parser.add_argument("--invert", default="auto", metavar="{auto,yes,no}",
                        help="yes: the image is dark ink on light paper; no: light ink on "
                             "dark, as MNIST (refused for an image that shows the other); "
                             "auto decides from the paper around the digit "
                             "(default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    return parser


def build_evaluate_parser():
    parser = OneLineParser(
        prog="main.py evaluate",
        description="Re-evaluate a run's best epoch (by validation accuracy), or --epoch N, "
                    "on the test split: loss, accuracy, each class's precision, recall and "
                    "F1, and the most-confused pairs.")
    parser.add_argument("--run-dir", required=True, help="the run to evaluate")
    parser.add_argument("--epoch", type=_number(int, "an integer"), default=None,
                        help="a completed epoch (default: the best by validation accuracy)")
    parser.add_argument("--data-dir", default=None,
                        help="the training's IDX folder, when it has moved since training")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    return parser


def run_command(command, arguments):
    """`predict` or `evaluate` with their `arguments`; returns the exit code."""
    import inference  # noqa: E402  (imports TensorFlow only once it is needed)

    if command == "predict":
        given = build_predict_parser().parse_args(arguments)
        if given.invert not in inference.digit_images.INVERT_CHOICES:
            raise basic_utils.UserError(f"unknown --invert {given.invert!r}; choose one of "
                                        f"{', '.join(inference.digit_images.INVERT_CHOICES)}.")
        return inference.predict(given.run_dir, given.images, top_k=given.top_k,
                                 invert=given.invert, as_json=given.json)
    given = build_evaluate_parser().parse_args(arguments)
    return inference.evaluate(given.run_dir, epoch=given.epoch, data_dir=given.data_dir,
                              as_json=given.json)


COMMANDS = ("predict", "evaluate")


def parse_config(arguments):
    """The `Config` of the command-line `arguments` (a list without the program name).

    Raises `basic_utils.UserError` for a value the settings refuse; argparse itself exits
    with code 2 for text it cannot parse.
    """
    given = vars(build_parser().parse_args(arguments))
    return settings.make_config(**{name: value for name, value in given.items()
                                   if value is not None})


def main(arguments=None):
    arguments = sys.argv[1:] if arguments is None else [str(argument) for argument in arguments]
    script = sys.argv[0] or "code/main.py"
    try:
        if arguments and arguments[0] in COMMANDS:
            return run_command(arguments[0], arguments[1:])
        config = parse_config(arguments)
        if config.data_dir:
            # A wrong folder is reported now, not after TensorFlow's slow start.
            dataset_utils.find_idx_files(config.data_dir, config.dataset)
        if config.distribute == "multi-worker":
            distribution.read_tf_config()
        basic_utils.import_tensorflow()
        import training_loop  # noqa: E402  (TensorFlow loads here)

        return distribution.leave(
            training_loop.run(config, arguments=arguments, script=script))
    except basic_utils.UserError as error:
        print(f"main.py: error: {error}", file=sys.stderr)
        return distribution.leave(2)
    except distribution.WorkerFailed as error:
        print(f"main.py: error: {error}", file=sys.stderr)
        return distribution.leave(1)
    except KeyboardInterrupt:
        # Without --overwrite: rerunning with it would start over instead of resuming.
        command = basic_utils.resume_command(script, arguments)
        print(f"\nInterrupted. Completed epochs are kept; resume with: {command}",
              file=sys.stderr)
        return distribution.leave(130)


if __name__ == "__main__":
    sys.exit(main())
