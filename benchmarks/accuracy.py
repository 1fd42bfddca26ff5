"""Accuracy benchmark: test accuracy per epoch, time per epoch and time to 99.0 % / 99.5 %, per seed.

    python benchmarks/accuracy.py --data-dir ../shared/data/mnist
    python benchmarks/accuracy.py --data-dir ../shared/data/mnist --recipes seed --seed-epochs 15

Each (recipe, seed) is one `code/main.py --preset RECIPE --seed S` process, run one after
another, timed from start to exit (everything a user waits for: start-up, all epochs, all
per-epoch files). "Time to X" is the training time (the train phase of each epoch, as
main.py prints it) summed up to the first epoch whose test accuracy reaches X.
"""

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import sys
import tempfile

from bench_utils import (CODE, DEFAULT_DATA_DIR, epoch_timings, machine,
                         read_metrics, run_benchmark, run_main)

sys.path.insert(0, CODE)

import settings  # noqa: E402

THRESHOLDS = (0.990, 0.995)


def time_to(rows, train_seconds, threshold):
    elapsed = 0.0
    for row in rows:
        elapsed += train_seconds[int(row["epoch"])]
        if row["test_accuracy"] >= threshold:
            return elapsed
    return None


def run_recipe(recipe, seed, data_dir, runs_dir, epochs, extra):
    run_dir = os.path.join(runs_dir, f"{recipe}-seed{seed}")
    if os.path.exists(run_dir):
        raise SystemExit(f"accuracy.py: {run_dir} exists; pass an empty --runs-dir "
                         "(nothing is overwritten).")
    arguments = ["--preset", recipe, "--seed", seed, "--data-dir", data_dir, "--run-dir", run_dir]
    if epochs:
        arguments += ["--epochs", epochs]
    output, wall, _ = run_main(arguments + extra)
    with open(f"{run_dir}.log", "w", encoding="utf-8") as handle:
        handle.write(output)  # what main.py printed, beside its run directory
    rows = read_metrics(run_dir)
    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as handle:
        saved_config = json.load(handle)  # what the run resolved, e.g. its precision
    timings = epoch_timings(output)
    train_seconds = {epoch: parts["train"] for epoch, parts in timings.items()}
    result = {
        "recipe": recipe, "seed": seed, "rows": rows, "wall": wall,
        "train_seconds": train_seconds,
        "config": saved_config,
        "final": rows[-1]["test_accuracy"],
        "to": {threshold: time_to(rows, train_seconds, threshold) for threshold in THRESHOLDS},
    }
    print(f"  {recipe} seed {seed}: test {100 * result['final']:.2f} % in {wall / 60:.1f} min",
          file=sys.stderr, flush=True)
    return result


def seconds_text(value):
    return "not reached" if value is None else f"{value:.0f} s"


def print_recipe(recipe, results):
    recipe_config = settings.make_config(recipe)
    epochs = len(results[0]["rows"])
    print(f"### `--preset {recipe}`: model {recipe_config.model}, {epochs} epochs, batch "
          f"{recipe_config.batch_size}, {recipe_config.optimizer} {recipe_config.learning_rate:g} "
          f"({recipe_config.schedule}), augmentation "
          f"{settings.describe_augmentation(recipe_config)}, "
          f"validation fraction {recipe_config.validation_fraction}"
          + (f", weight average {recipe_config.weight_average:g}" if recipe_config.weight_average else "")
          + f", precision {results[0]['config']['precision']}"
          + (", XLA" if results[0]["config"]["xla"] else "")
          + f", on {results[0]['config']['versions']['device']}")
    print()
    seeds = [result["seed"] for result in results]
    print("| epoch | " + " | ".join(f"seed {seed}: test acc | train s" for seed in seeds) + " |")
    print("| ---: |" + " ---: | ---: |" * len(seeds))
    for index in range(epochs):
        cells = []
        for result in results:
            row = result["rows"][index]
            cells.append(f"{100 * row['test_accuracy']:.2f} % | "
                         f"{result['train_seconds'][int(row['epoch'])]:.1f}")
        print(f"| {index + 1} | " + " | ".join(cells) + " |")
    print()
    print("| seed | final test acc | best val acc (its test acc) | time to 99.0 % | "
          "time to 99.5 % | median epoch (train + val + test) | whole run |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for result in results:
        best = max(result["rows"], key=lambda row: row["val_accuracy"])
        epoch_seconds = statistics.median(row["seconds"] for row in result["rows"])
        print(f"| {result['seed']} | {100 * result['final']:.2f} % | "
              f"{100 * best['val_accuracy']:.2f} % ({100 * best['test_accuracy']:.2f} %) | "
              f"{seconds_text(result['to'][0.990])} | {seconds_text(result['to'][0.995])} | "
              f"{epoch_seconds:.1f} s | {result['wall'] / 60:.1f} min |")
    finals = [100 * result["final"] for result in results]
    spread = statistics.stdev(finals) if len(finals) > 1 else 0.0
    walls = [result["wall"] / 60 for result in results]
    print()
    print(f"Mean final test accuracy over {len(finals)} seeds: **{statistics.mean(finals):.2f} % "
          f"± {spread:.2f}** (sample standard deviation; min {min(finals):.2f}, "
          f"max {max(finals):.2f}). Whole run: {min(walls):.1f}–{max(walls):.1f} min.")
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help="folder with the four MNIST IDX files (default: %(default)s)")
    parser.add_argument("--recipes", nargs="+", default=["standard", "fast", "seed"],
                        choices=tuple(settings.PRESETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--seed-epochs", type=int, default=0,
                        help="epochs for the seed recipe (default: its preset's 50)")
    parser.add_argument("--runs-dir", default=None,
                        help="keep the run directories and main.py's output (RUN.log) here "
                             "(default: a temporary folder, deleted at the end)")
    parser.add_argument("--main-args", default="",
                        help="more main.py flags for every run, e.g. \"--precision float32\"")
    options = parser.parse_args()
    if not os.path.isdir(options.data_dir):
        raise SystemExit(f"accuracy.py: no MNIST folder at {options.data_dir}; pass --data-dir.")
    if len(set(options.seeds)) != len(options.seeds):
        raise SystemExit("accuracy.py: --seeds repeats a seed.")
    own = {"--preset", "--seed", "--data-dir", "--run-dir", "--overwrite"}
    if own & set(shlex.split(options.main_args)):
        raise SystemExit(f"accuracy.py: --main-args must not set {', '.join(sorted(own))}; "
                         "accuracy.py sets them itself.")
    runs_dir = options.runs_dir or tempfile.mkdtemp(prefix="accuracy-bench-")
    # SIGTERM (a timeout) ends the process through `finally`, so temporary runs go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"Machine: {machine()}. Full MNIST from {os.path.abspath(options.data_dir)}; "
          f"runs one after another.", flush=True)
    print()
    try:
        # Each recipe's tables are printed as soon as its seeds are done.
        for recipe in options.recipes:
            results = [run_recipe(recipe, seed, options.data_dir, runs_dir,
                                  options.seed_epochs if recipe == "seed" else 0,
                                  shlex.split(options.main_args))
                       for seed in options.seeds]
            print_recipe(recipe, results)
            sys.stdout.flush()
    finally:
        if not options.runs_dir:
            shutil.rmtree(runs_dir, ignore_errors=True)


if __name__ == "__main__":
    run_benchmark(main)
