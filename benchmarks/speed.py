"""Speed benchmark: our training loop against `model.fit()`, and what an epoch spends beyond training.

    python benchmarks/speed.py --data-dir ../shared/data/mnist

Part 1 (one process): the same network, optimizer, batch size and batches (the standard
preset's, from `MnistData`) trained by our loop and by Keras `model.fit()` on the
equivalent tf.data pipeline, one whole epoch each, alternating, after a warm-up that
compiles both. `fit()` is compiled as Keras chooses by default (`jit_compile="auto"`; with
op determinism on, as in the application, Keras picks no XLA, and for this model it also
refuses `jit_compile=True`). With `--xla` both are compiled by XLA, and op determinism is off.

`--precision` is resolved as main.py resolves it (auto: mixed with a GPU, else float32), and
both contenders use it.

Part 2: `code/main.py` itself for a few epochs on the full data in a temporary run
directory; the per-phase times it prints give the overhead of validation, test, rendering
the checkpoint and plots, writing the epoch folder, and writing the TensorBoard events,
the report page and (for an epoch that is the best so far) best/ ("outputs"); epoch 1,
which includes compiling the steps, is left out. Part 1 also times our loop with the
progress bar drawn after every step, as on a terminal.
"""

import argparse
import io
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time

from bench_utils import (CODE, DEFAULT_DATA_DIR, epoch_timings, machine,
                         run_benchmark, run_main)

sys.path.insert(0, CODE)
import basic_utils  # noqa: E402

basic_utils.set_tensorflow_environment()  # as code/main.py does, before TensorFlow loads


def train_dataset(data, epoch, skip=0):
    """The batches of `data.train_batches(epoch, skip)` as a tf.data pipeline of (images,
    labels), for `model.fit()`: the same order, the same augmentation seeds, made by the
    same `dataset_utils.make_batch`, in tf.data's threads instead of inside the step
    (tests/test_recipes.py checks that the batches are the same)."""
    import tensorflow as tf

    import dataset_utils

    images, labels = data.host_tensors()  # tf.data runs on the CPU, whatever the device
    augment = tf.constant(data.augments(epoch)) if data.augment else None

    def batch(batch_index, indices):
        return dataset_utils.make_batch(images, labels, indices,
                                        data.batch_seed(epoch, batch_index), augment)

    return (
        tf.data.Dataset.from_tensor_slices(data.epoch_order(epoch))
        .batch(data.batch_size)
        .enumerate()
        .skip(skip)
        .map(batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def loop_vs_fit(data_dir, repeats, steps, precision, xla):
    import keras
    import tensorflow as tf

    import dataset_utils
    import model as model_module
    import progress
    import settings
    import train_state
    import train_validation_test as tvt

    gpu = bool(tf.config.list_physical_devices("GPU"))
    config = settings.make_config(
        data_dir=data_dir, xla=xla, deterministic=not xla,
        precision=settings.resolve_precision(precision, None, gpu))
    basic_utils.set_global_seed(config.seed, deterministic=config.deterministic)
    data = dataset_utils.load_processing_mnist(config, announce=lambda *_: None)
    steps = min(steps or data.steps_per_epoch, data.steps_per_epoch)
    images = min(steps * config.batch_size, len(data.train_labels))

    # Ours as main.py trains: with the standard preset's weight average updated every step.
    ours = tvt.Steps(train_state.create_train_state(config, 10, data.steps_per_epoch),
                     data.make_batch, jit_compile=config.xla)

    def run_ours(epoch, count, skip=0):
        tvt.go_train(ours, itertools.islice(data.train_batches(epoch, skip), count))

    def run_ours_with_bar(epoch, count, skip=0):
        # What main.py does on a terminal: the progress bar told after every step. It
        # draws into memory here; a terminal's own drawing costs the terminal, not us.
        shown = progress.EpochProgress("bar", epoch, 100, count, 0, config.batch_size,
                                       stream=io.StringIO())
        done = itertools.count(1)
        tvt.go_train(ours, itertools.islice(data.train_batches(epoch, skip), count),
                     after_step=lambda sums, _: shown.after_step(next(done), sums))
        shown.close()

    fitted = model_module.build_model(config.model, precision=config.precision)
    fitted.compile(
        optimizer=train_state.make_optimizer(config, data.steps_per_epoch),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=True if config.xla else "auto",
    )

    def run_fit(epoch, count, skip=0):
        fitted.fit(train_dataset(data, epoch, skip).take(count), epochs=1, verbose=0,
                   shuffle=False)  # the dataset is shuffled already

    runners = {"ours": run_ours, "ours with the bar": run_ours_with_bar, "fit": run_fit}
    for runner in runners.values():  # warm-up: tracing and compilation
        runner(100, 20)
        # The epoch's short last batch too: XLA compiles once per batch shape.
        runner(100, 2, skip=data.steps_per_epoch - 2)
    seconds = {label: [] for label in runners}
    for repeat in range(repeats):
        for label, runner in runners.items():
            started = time.perf_counter()
            runner(repeat + 1, steps)
            seconds[label].append(time.perf_counter() - started)
            print(f"  repeat {repeat + 1}: {label} {seconds[label][-1]:.1f} s", file=sys.stderr)
    return config, steps, images, seconds, fitted.jit_compile, data.steps_per_epoch


def overhead(data_dir, epochs, precision, xla):
    work = tempfile.mkdtemp(prefix="speed-bench-")
    try:
        output, _, _ = run_main(["--data-dir", data_dir, "--epochs", epochs,
                                 "--run-dir", os.path.join(work, "run"),
                                 "--precision", precision]
                                + (["--xla", "--no-determinism"] if xla else []))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {epoch: parts for epoch, parts in epoch_timings(output).items() if epoch > 1}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help="folder with the four MNIST IDX files (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="epochs timed per contender, alternating (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=0,
                        help="training steps timed per repeat (default: a whole epoch)")
    parser.add_argument("--overhead-epochs", type=int, default=3,
                        help="epochs of main.py for the overhead table; the first is "
                             "left out (default: %(default)s)")
    parser.add_argument("--precision", choices=("auto", "float32", "mixed"), default="auto",
                        help="as main.py's --precision (default: %(default)s)")
    parser.add_argument("--xla", action="store_true",
                        help="compile both contenders with XLA (op determinism off)")
    options = parser.parse_args()
    if not os.path.isdir(options.data_dir):
        raise SystemExit(f"speed.py: no MNIST folder at {options.data_dir}; pass --data-dir.")
    if options.overhead_epochs < 2:
        raise SystemExit("speed.py: --overhead-epochs must be at least 2 (epoch 1 is left out).")

    config, steps, images, seconds, jit, data_steps = loop_vs_fit(options.data_dir, options.repeats,
                                                      options.steps, options.precision,
                                                      options.xla)

    print(f"Machine: {machine()}.")
    print(f"Model {config.model}, batch {config.batch_size}, {config.optimizer} "
          f"({config.schedule}), augmentation {'on' if config.augment else 'off'}, "
          f"precision {config.precision}{', XLA' if config.xla else ''}; "
          f"{steps} steps ({images:,} images) per timing, medians of {options.repeats}, "
          f"alternating in one process.")
    print()
    per = "epoch" if steps == data_steps else f"{steps} steps"
    print(f"| training loop | seconds per {per} | images / s | ours vs this |")
    print("| --- | ---: | ---: | ---: |")
    median = {label: statistics.median(values) for label, values in seconds.items()}
    average = " and the weight average updated" if config.weight_average else ""
    names = {"ours": f"ours (`go_train`, batches gathered and augmented in the step{average}"
                     f"{', XLA' if config.xla else ''})",
             "ours with the bar": "ours with the progress bar drawn (into memory) after "
                                  "every step",
             "fit": f"`model.fit()` on the tf.data pipeline (jit_compile resolved to {jit})"}
    for label, name in names.items():
        ratio = median[label] / median["ours"]
        print(f"| {name} | {median[label]:.1f} | {images / median[label]:,.0f} | {ratio:.2f}x |")
    print()
    print(f"Speed ratio, fit() time / our time: {median['fit'] / median['ours']:.2f} "
          "(> 1 means our loop is faster); with the progress bar: "
          f"{median['fit'] / median['ours with the bar']:.2f}.")
    print("Every timing, in order: "
          + "; ".join(f"{label} " + ", ".join(f"{value:.1f}" for value in values)
                      for label, values in seconds.items()) + " s.")
    print(flush=True)  # part 1 stands on its own if part 2 is cut short

    phases = overhead(options.data_dir, options.overhead_epochs, config.precision, config.xla)
    print(f"Per-epoch phases of `code/main.py` (standard preset, precision {config.precision}"
          f"{', XLA' if config.xla else ''}, full data), "
          f"epochs {', '.join(map(str, phases))} (medians):")
    print()
    print("| phase | seconds | share of the epoch |")
    print("| --- | ---: | ---: |")
    names = ("train", "validation", "test", "render", "save", "outputs")
    totals = [sum(parts.get(name, 0.0) for name in names) for parts in phases.values()]
    epoch_total = statistics.median(totals)
    for name in names:
        value = statistics.median(parts.get(name, 0.0) for parts in phases.values())
        print(f"| {name} | {value:.2f} | {100 * value / epoch_total:.1f} % |")
    extra = [total - parts["train"] for total, parts in zip(totals, phases.values())]
    share = statistics.median(e / t for e, t in zip(extra, totals))
    print(f"| everything beyond training | {statistics.median(extra):.2f} | {100 * share:.1f} % |")


if __name__ == "__main__":
    run_benchmark(main)
