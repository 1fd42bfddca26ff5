"""Resume benchmark: the cost of determinism, checkpoint write time, and start-up time.

    python benchmarks/resume.py --data-dir ../shared/data/mnist

Each figure comes from separate `code/main.py` processes on a 6,000-image subset of the
real training set (written as IDX files to a temporary folder), alternating the variants so
that the machine's drift hits both alike; medians are printed as a Markdown table.
"""

import argparse
import os
import re
import shutil
import statistics
import struct
import sys
import tempfile

from bench_utils import CODE, epoch_timings, run_benchmark, run_main

sys.path.insert(0, CODE)

import dataset_utils  # noqa: E402


def write_idx(path, array, magic):
    """Write a uint8 array as an IDX file: big-endian magic and sizes, then the bytes."""
    with open(path, "wb") as handle:
        handle.write(struct.pack(f">I{array.ndim}I", magic, *array.shape))
        handle.write(array.astype("uint8").tobytes())


def write_subset(data_dir, folder, train=6000, test=1000):
    full = dataset_utils.load_idx_folder(data_dir)
    for split, prefix, count in (("train", "train", train), ("test", "t10k", test)):
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte"),
                  getattr(full, f"{split}_images")[:count, ..., 0], dataset_utils.IMAGE_MAGIC)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"),
                  getattr(full, f"{split}_labels")[:count], dataset_utils.LABEL_MAGIC)
    return folder


def train_seconds(output):
    return [parts["train"] for _, parts in sorted(epoch_timings(output).items())]


def run(arguments, marker="Model:"):
    output, _, ready = run_main(arguments, marker)
    return output, ready


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    work = tempfile.mkdtemp(prefix="resume-bench-")
    try:
        os.makedirs(os.path.join(work, "idx"))
        data = write_subset(options.data_dir, os.path.join(work, "idx"))
        common = ["--data-dir", data, "--checkpoint-every-steps", 0]
        timings = {"deterministic": [], "not deterministic": []}
        starts = {"fresh": [], "resume": []}
        for repeat in range(options.repeats):
            for label, extra in (("deterministic", []), ("not deterministic", ["--no-determinism"])):
                run_dir = os.path.join(work, f"{label}-{repeat}")
                output, ready = run(common + ["--epochs", 2, "--run-dir", run_dir] + extra)
                timings[label].append(train_seconds(output)[-1])  # epoch 2: no tracing
                if label == "deterministic":
                    starts["fresh"].append(ready)
                    # Extend the finished run by one epoch: start-up includes the restore.
                    _, ready = run(common + ["--epochs", 3, "--run-dir", run_dir],
                                   marker="Resuming")
                    starts["resume"].append(ready)
        write_times = []
        for repeat in range(options.repeats):
            run_dir = os.path.join(work, f"ckpt-{repeat}")
            output, _ = run(["--data-dir", data, "--epochs", 1, "--run-dir", run_dir])
            write_times += [float(value) for value in re.findall(r"written in ([0-9.]+) s", output)]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    deterministic = statistics.median(timings["deterministic"])
    free = statistics.median(timings["not deterministic"])
    print(f"Subset: 5,400 train images (batch 128, 43 steps); medians of {options.repeats} runs.")
    print()
    print("| measure | median |")
    print("| --- | ---: |")
    print(f"| training epoch, deterministic (default) | {deterministic:.2f} s |")
    print(f"| training epoch, `--no-determinism` | {free:.2f} s |")
    print(f"| cost of determinism | {100 * (deterministic / free - 1):+.1f} % |")
    print(f"| writing one epoch folder (checkpoint, 2 PNGs, metrics; fsynced) | "
          f"{statistics.median(write_times):.3f} s |")
    print(f"| start to first training step, fresh run | {statistics.median(starts['fresh']):.1f} s |")
    print(f"| start to first training step, resuming | {statistics.median(starts['resume']):.1f} s |")


if __name__ == "__main__":
    run_benchmark(main)
