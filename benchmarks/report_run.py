"""Print a Markdown summary of a finished run directory: the figures the README quotes.

    python code/main.py --data-dir ../shared/data/mnist --run-dir runs/readme
    python benchmarks/report_run.py runs/readme

It reads only metrics.csv and config.json, so it can summarise any run, on any machine.
"""

import argparse
import json
import os
import statistics

from bench_utils import cpu_name, read_metrics


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    run_dir = parser.parse_args().run_dir
    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    rows = read_metrics(run_dir)

    print(f"Run: {os.path.abspath(run_dir)}")
    print(f"Machine: {cpu_name()}, {os.cpu_count()} logical cores; "
          f"TensorFlow {config['versions']['tensorflow']}, Keras {config['versions']['keras']}")
    print(f"Data: {config['data_description']} ({config['num_train']:,} train, "
          f"{config['num_validation']:,} validation, {config['num_test']:,} test)")
    print(f"Settings: preset {config.get('preset', '-')}, model {config['model']}, "
          f"epochs {config['epochs']}, batch {config['batch_size']}, "
          f"{config.get('optimizer', 'adam')} at {config['learning_rate']} "
          f"({config.get('schedule', 'exponential decay')}), seed {config['seed']}, "
          f"augment {config['augment']}")
    print()
    print("| epoch | train loss | train acc | val loss | val acc | test loss | test acc | seconds |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {int(row['epoch'])} | {row['train_loss']:.4f} | {100 * row['train_accuracy']:.2f}% "
              f"| {row['val_loss']:.4f} | {100 * row['val_accuracy']:.2f}% "
              f"| {row['test_loss']:.4f} | {100 * row['test_accuracy']:.2f}% | {row['seconds']:.1f} |")
    seconds = [row["seconds"] for row in rows]
    best = max(rows, key=lambda row: row["val_accuracy"])
    print()
    print(f"Final test accuracy: {100 * rows[-1]['test_accuracy']:.2f}% after {len(rows)} epochs.")
    print(f"Best validation accuracy: {100 * best['val_accuracy']:.2f}% at epoch {int(best['epoch'])} "
          f"(test {100 * best['test_accuracy']:.2f}%).")
    print(f"Seconds per epoch (train + validation + test): median {statistics.median(seconds):.1f}, "
          f"min {min(seconds):.1f}, max {max(seconds):.1f}; total {sum(seconds) / 60:.1f} min.")


if __name__ == "__main__":
    main()
