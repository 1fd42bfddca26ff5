"""A short run on a subset of the real MNIST (skipped when ../shared/data/mnist is absent)."""

import json

import dataset_utils
import settings
import training_loop


def test_brief_training_on_real_digits_reaches_95_percent(real_mnist_dir, tmp_path):
    full = dataset_utils.load_idx_folder(real_mnist_dir)
    assert full.train_images.shape == (60000, 28, 28, 1)
    assert full.test_images.shape == (10000, 28, 28, 1)
    subset = dataset_utils.RawData(
        full.train_images[:6000], full.train_labels[:6000],
        full.test_images[:2000], full.test_labels[:2000],
        source="idx-subset", description="first 6,000 train / 2,000 test real MNIST digits",
    )
    config = settings.make_config(epochs=3, run_dir=str(tmp_path / "run"))
    messages = []
    assert training_loop.run(config, raw=subset, out=messages.append, arguments=[]) == 0
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    test_accuracy = float(rows[-1].split(",")[6])
    assert test_accuracy >= 0.95, messages
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data_source"] == "idx-subset" and saved["num_test"] == 2000
