"""Images per second of the training step with one replica and with two (MirroredStrategy).

    python benchmarks/distribute.py --data-dir ../shared/data/mnist

One process: the CPU is split into two logical devices before TensorFlow starts, then the
standard preset's state is trained by our steps without a strategy (one replica, as
`--distribute none`) and under MirroredStrategy over both logical devices (two replicas,
as `--distribute mirrored --devices CPU:0,CPU:1`), alternating, after a warm-up that
traces both. The same global batches feed both. On one CPU the two replicas share its
cores, so this checks the plumbing's cost, not a speed-up: on GPUs each replica would have
its own device.
"""

import argparse
import itertools
import statistics
import sys
import time

from bench_utils import CODE, DEFAULT_DATA_DIR, machine, run_benchmark

sys.path.insert(0, CODE)
import basic_utils  # noqa: E402

basic_utils.set_tensorflow_environment()  # as code/main.py does, before TensorFlow loads


def measure(data_dir, steps, repeats):
    import distribution
    import settings

    mirrored = settings.make_config(data_dir=data_dir, precision="float32",
                                    distribute="mirrored", devices="CPU:0,CPU:1")
    cluster = distribution.create(mirrored)  # before any other TensorFlow call
    import dataset_utils
    import train_state
    import train_validation_test as tvt

    runners = {}
    for label, strategy, replicas in (("1 replica (none)", None, 1),
                                      ("2 replicas (mirrored)", cluster.strategy, 2)):
        config = settings.make_config(data_dir=data_dir, precision="float32")
        basic_utils.set_global_seed(config.seed)
        data = dataset_utils.load_processing_mnist(config, announce=lambda *_: None,
                                                   replicas=replicas)
        state = train_state.create_train_state(config, 10, data.steps_per_epoch,
                                               strategy=strategy)
        runners[label] = (tvt.Steps(state, data.make_batch, strategy=strategy), data)

    def train(label, epoch, count):
        steps_of, data = runners[label]
        tvt.go_train(steps_of, itertools.islice(data.train_batches(epoch), count))

    for label in runners:  # warm-up: tracing
        train(label, 100, 10)
    seconds = {label: [] for label in runners}
    for repeat in range(repeats):
        for label in runners:
            started = time.perf_counter()
            train(label, repeat + 1, steps)
            seconds[label].append(time.perf_counter() - started)
            print(f"  repeat {repeat + 1}: {label} {seconds[label][-1]:.1f} s", file=sys.stderr)
    batch = runners["1 replica (none)"][1].batch_size
    return seconds, steps * batch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help="folder with the four MNIST IDX files (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=100,
                        help="training steps timed per repeat (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="repeats per replica count, alternating (default: %(default)s)")
    given = parser.parse_args()
    seconds, images = measure(given.data_dir, given.steps, given.repeats)
    print(f"Machine: {machine()}")
    print(f"Standard preset (convnet, batch 128, augmentation, weight average), {given.steps} "
          f"steps ({images:,} images) per repeat, {given.repeats} repeats, median:\n")
    print("| replicas | images/s (median) | range | vs 1 replica |")
    print("| --- | --- | --- | --- |")
    base = images / statistics.median(seconds["1 replica (none)"])
    for label, values in seconds.items():
        rate = images / statistics.median(values)
        print(f"| {label} | {rate:,.0f} | {images / max(values):,.0f}-{images / min(values):,.0f}"
              f" | {rate / base:.2f} |")


if __name__ == "__main__":
    run_benchmark(main)
