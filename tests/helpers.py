"""Test helpers: tiny IDX files, synthetic digit-like images a small network can learn, and
running the program and reading its run directory. Every test file takes them from here."""

import gzip
import hashlib
import os
import pathlib
import struct
import subprocess
import sys
import time

import numpy as np

IMAGE_NAMES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
LABEL_NAMES = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}


def idx_bytes(array, magic):
    """Encode a uint8 array as an IDX file (big-endian header, then the raw bytes)."""
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_file(path, data, compress):
    if compress:
        path += ".gz"
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        with open(path, "wb") as handle:
            handle.write(data)
    return path


def synthetic_digits(count, seed):
    """Images whose class decides where a bright square sits (a 2x5 grid), plus noise.

    The squares lie 5 pixels apart, further than augmentation shifts them, so a small
    network learns the classes in a few epochs.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(count, 28, 28)).astype(np.uint8)
    for index, label in enumerate(labels):
        row = 6 + 11 * (label // 5)
        column = 2 + 5 * (label % 5)
        images[index, row:row + 5, column:column + 4] = 230
    return images, labels.astype(np.uint8)


def noise_digits(count, seed):
    """Images of uniform noise with random labels: nothing to learn, but no two pixels of
    a neighbourhood alike, so that max-pooling never meets a tie (whose gradient kernels
    may break in different ways)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(count, 28, 28)).astype(np.uint8),
            rng.integers(0, 10, size=count).astype(np.uint8))


def write_mnist_folder(folder, train=300, test=100, compress=True, seed=0, make=synthetic_digits):
    """Write the four IDX files of a tiny dataset of `make(count, seed)` images into
    `folder`; returns it."""
    os.makedirs(folder, exist_ok=True)
    for split, count in (("train", train), ("test", test)):
        images, labels = make(count, seed + (split == "test"))
        write_file(os.path.join(folder, IMAGE_NAMES[split]), idx_bytes(images, 2051), compress)
        write_file(os.path.join(folder, LABEL_NAMES[split]), idx_bytes(labels, 2049), compress)
    return str(folder)


# ----------------------------------------------------------------------------------------
# Running the program and reading what it wrote
# ----------------------------------------------------------------------------------------

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MAIN = str(REPO_ROOT / "code" / "main.py")
COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
           "test_loss", "test_accuracy", "learning_rate", "seconds"]


def run_main(capsys, *arguments):
    """Run main.main in this process (TensorFlow is loaded once for all tests); returns
    (exit code, stdout, stderr)."""
    import main

    code = main.main([str(argument) for argument in arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def environment(**extra):
    """The environment of a main.py subprocess: unbuffered, TensorFlow's C++ logs off."""
    return dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3", **extra)


def start_main(arguments, **extra_env):
    """Start main.py in a subprocess with piped text output."""
    return subprocess.Popen([sys.executable, MAIN, *map(str, arguments)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=environment(**extra_env))


def run_main_process(arguments, **extra_env):
    """Run main.py in a subprocess to its end; returns the CompletedProcess."""
    return subprocess.run([sys.executable, MAIN, *map(str, arguments)], capture_output=True,
                          text=True, env=environment(**extra_env), timeout=600)


def tree_digest(path):
    """{relative path: sha256} of every file under `path`."""
    digests = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = pathlib.Path(root, name)
            digests[str(full.relative_to(path))] = hashlib.sha256(full.read_bytes()).hexdigest()
    return digests


def read_metrics(run_dir):
    """metrics.csv as a list of {column: float} rows, after checking its header."""
    lines = (pathlib.Path(run_dir) / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",") == COLUMNS
    return [dict(zip(COLUMNS, map(float, line.split(",")))) for line in lines[1:]]


def metrics_without_seconds(run_dir):
    """metrics.csv's lines without the `seconds` column, which no two runs share."""
    lines = (pathlib.Path(run_dir) / "metrics.csv").read_text().splitlines()
    return [",".join(line.split(",")[:-1]) for line in lines]


def checkpoint_arrays(path):
    """{name: array} of every entry of a checkpoint file."""
    with np.load(path) as archive:
        return {key: archive[key] for key in archive.files}


def final_variables(run_dir):
    """The variables of the newest epoch's checkpoint (model, optimizer, average)."""
    latest = (pathlib.Path(run_dir) / "LATEST").read_text().strip()
    arrays = checkpoint_arrays(pathlib.Path(run_dir) / latest / "checkpoint")
    return {key: value for key, value in arrays.items()
            if key.startswith(("model/", "optimizer/", "average/"))}


def assert_same_run(run_a, run_b):
    """Two runs agree on every metrics.csv column but `seconds` and on every variable of
    their final checkpoints, bit for bit."""
    assert metrics_without_seconds(run_a) == metrics_without_seconds(run_b)
    weights_a, weights_b = final_variables(run_a), final_variables(run_b)
    assert weights_a.keys() == weights_b.keys() and weights_a
    for key in weights_a:
        np.testing.assert_array_equal(weights_a[key], weights_b[key], err_msg=key)


def wait_for(predicate, process, timeout=180):
    """Poll `predicate` until it holds; fails if `process` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise AssertionError(f"process ended early: {process.communicate()}")
        time.sleep(0.02)
    process.kill()
    raise AssertionError("timed out")
