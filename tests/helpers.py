"""Test helpers: tiny IDX files and synthetic digit-like images a small network can learn."""

import gzip
import os
import struct

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


def write_mnist_folder(folder, train=300, test=100, compress=True, seed=0):
    """Write the four IDX files of a tiny synthetic dataset into `folder`; returns it."""
    os.makedirs(folder, exist_ok=True)
    for split, count in (("train", train), ("test", test)):
        images, labels = synthetic_digits(count, seed + (split == "test"))
        write_file(os.path.join(folder, IMAGE_NAMES[split]), idx_bytes(images, 2051), compress)
        write_file(os.path.join(folder, LABEL_NAMES[split]), idx_bytes(labels, 2049), compress)
    return str(folder)
