"""CPU kernels benchmark: what oneDNN and the fused batch norm each add to training speed.

    python benchmarks/kernels.py --data-dir ../shared/data/mnist

TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, when it loads, so each setting runs in its own
process (0: TensorFlow's Eigen kernels, its default on CPUs without AVX-512 deep-learning
instructions; 1: oneDNN, which `code/main.py` turns on). Inside each process the standard
network with `model.FusedBatchNorm` and the same network with Keras' `BatchNormalization`
train the same batches of epoch 2 (augmented, weight average updated, op determinism on),
alternating in chunks of steps after a warm-up. Prints a Markdown table of training
images per second (median over chunks) and the speed-up over Eigen with Keras' layer.
"""

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time

from bench_utils import CODE, DEFAULT_DATA_DIR, machine, run_benchmark

sys.path.insert(0, CODE)

SETTINGS = ("0", "1")
LAYERS = ("keras", "fused")


def measure(data_dir, chunks, steps):
    """Images per second of each batch-norm layer in this process: {layer: [per chunk]}."""
    import basic_utils
    import dataset_utils
    import model as model_module
    import settings
    import train_state
    import train_validation_test as tvt

    config = settings.make_config(data_dir=data_dir, precision="float32")
    basic_utils.set_global_seed(config.seed, deterministic=config.deterministic)
    data = dataset_utils.load_processing_mnist(config, announce=lambda *_: None)

    def build(layer):
        network = model_module.build_model(config.model, batch_norm=layer)
        optimizer = train_state.make_optimizer(config, data.steps_per_epoch)
        optimizer.build(network.trainable_variables)
        state = train_state.TrainState(network, optimizer,
                                       train_state.make_weight_average(config, network))
        return tvt.Steps(state, data.make_batch)

    runners = {layer: build(layer) for layer in LAYERS}
    # Full batches of one epoch only (its last batch is short): 10 to warm up, then the chunks.
    full_batches = len(data.train_labels) // config.batch_size
    if 10 + chunks * steps > full_batches:
        raise SystemExit(f"--chunks x --steps must be at most {full_batches - 10} "
                         f"({full_batches} full batches per epoch, 10 for the warm-up)")
    batches = list(itertools.islice(data.train_batches(2), 10 + chunks * steps))
    for runner in runners.values():  # warm-up: tracing
        tvt.go_train(runner, batches[:10])
    rates = {layer: [] for layer in LAYERS}
    for chunk in range(chunks):
        part = batches[10 + chunk * steps:10 + (chunk + 1) * steps]
        # Alternate which layer goes first, so that a drift of the machine hits both alike.
        for layer in (LAYERS if chunk % 2 == 0 else LAYERS[::-1]):
            started = time.perf_counter()
            tvt.go_train(runners[layer], part)
            rates[layer].append(len(part) * config.batch_size / (time.perf_counter() - started))
    return rates


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--chunks", type=int, default=5, help="timed chunks per layer")
    parser.add_argument("--steps", type=int, default=40, help="training steps per chunk")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        print(json.dumps(measure(options.data_dir, options.chunks, options.steps)))
        return
    if not os.path.isdir(options.data_dir):
        raise SystemExit(f"no MNIST IDX folder at {options.data_dir}; pass --data-dir")

    results = {}
    for setting in SETTINGS:
        env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting, TF_CPP_MIN_LOG_LEVEL="3")
        child = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--child", "--data-dir", options.data_dir,
             "--chunks", str(options.chunks), "--steps", str(options.steps)],
            env=env, capture_output=True, text=True)
        if child.returncode != 0:
            raise SystemExit(f"TF_ENABLE_ONEDNN_OPTS={setting} run failed:\n{child.stderr}")
        results[setting] = json.loads(child.stdout.strip().splitlines()[-1])

    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # machine() imports TensorFlow in this process
    base = statistics.median(results["0"]["keras"])
    print(f"Machine: {machine()}")
    print(f"Standard network, batch 128, {options.chunks} alternating chunks of "
          f"{options.steps} steps per layer and setting; medians.\n")
    print("| kernels (TF_ENABLE_ONEDNN_OPTS) | batch norm | images / s | speed-up | every chunk |")
    print("| --- | --- | ---: | ---: | --- |")
    names = {"0": "Eigen (0)", "1": "oneDNN (1, the default here)"}
    layers = {"keras": "`keras.layers.BatchNormalization`", "fused": "`FusedBatchNorm`"}
    for setting in SETTINGS:
        for layer in LAYERS:
            rates = results[setting][layer]
            median = statistics.median(rates)
            print(f"| {names[setting]} | {layers[layer]} | {median:,.0f} | {median / base:.2f}x | "
                  + ", ".join(f"{rate:,.0f}" for rate in rates) + " |")


if __name__ == "__main__":
    run_benchmark(main)
