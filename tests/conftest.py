"""Shared fixtures: quiet TensorFlow, tiny IDX folders, and the path of the real MNIST copy."""

import os
import pathlib

import basic_utils

# The kernels and log level code/main.py uses, set before any test imports TensorFlow.
basic_utils.set_tensorflow_environment(log_level="2")

import pytest  # noqa: E402

import helpers  # noqa: E402

REAL_MNIST_DIR = pathlib.Path(
    os.environ.get("MNIST_IDX_DIR", helpers.REPO_ROOT.parent / "shared" / "data" / "mnist")
)


@pytest.fixture
def tiny_mnist_dir(tmp_path):
    """A folder with the four IDX files of 300 train and 100 test synthetic images."""
    return helpers.write_mnist_folder(tmp_path / "idx", train=300, test=100)


@pytest.fixture
def real_mnist_dir():
    """The real MNIST IDX folder beside the repository; skips the test when absent."""
    if not all((REAL_MNIST_DIR / name).exists() for name in (
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
    )):
        pytest.skip(f"real MNIST IDX files not found in {REAL_MNIST_DIR} "
                    "(set MNIST_IDX_DIR to a folder holding them)")
    return str(REAL_MNIST_DIR)
