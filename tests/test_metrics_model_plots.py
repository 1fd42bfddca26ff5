"""Pure pieces: the confusion-matrix function, the model's shapes, the plots and reporter."""

import io

import matplotlib.image
import numpy as np
import pytest

import basic_utils
import cp_utils
import dataset_utils
import model as model_module
import plots
from train_validation_test import get_classification_metrics


def test_confusion_matrix_on_hand_made_labels():
    labels = [0, 0, 1, 2, 2, 2, 9]
    predictions = [0, 1, 1, 2, 2, 0, 9]
    metrics = get_classification_metrics(labels, predictions, num_classes=10)
    matrix = metrics["confusion_matrix"]
    assert matrix.shape == (10, 10)
    assert matrix[0, 0] == 1 and matrix[0, 1] == 1  # rows are true labels
    assert matrix[1, 1] == 1
    assert matrix[2, 2] == 2 and matrix[2, 0] == 1
    assert matrix[9, 9] == 1
    assert matrix.sum() == 7
    assert metrics["accuracy"] == pytest.approx(5 / 7)


def test_confusion_matrix_is_ten_by_ten_even_for_missing_classes():
    metrics = get_classification_metrics([3, 3], [3, 3])
    assert metrics["confusion_matrix"].shape == (10, 10)
    assert metrics["accuracy"] == 1.0


def test_confusion_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match="differ in length"):
        get_classification_metrics([1, 2], [1])
    with pytest.raises(ValueError, match="0..9"):
        get_classification_metrics([1, 10], [1, 2])


def test_model_outputs_one_logit_per_class():
    network = model_module.build_model()
    images = np.random.default_rng(0).random((4, 28, 28, 1)).astype("float32")
    logits = network(images, training=False)
    assert tuple(logits.shape) == (4, 10)
    assert network.count_params() > 10_000
    # Inference is deterministic: dropout is off outside training.
    np.testing.assert_allclose(network(images, training=False), logits)


def assert_close_in_float32(ours, theirs, values):
    """Two float32 computations of statistics over `values` numbers each agree within the
    rounding of those sums: each addition is off by at most 2^-24 of the running sum, so
    within `values` * 2^-24 of the largest magnitude involved (twice that for two
    implementations, and twice again for what follows from the sums)."""
    theirs = np.asarray(theirs)
    bound = 4 * values * 2.0 ** -24 * np.abs(theirs).max()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=bound)


def test_fused_batch_norm_matches_keras_batch_normalization():
    import keras

    n = 8 * 5 * 5  # values per channel
    rng = np.random.default_rng(1)
    channels = 6
    gamma, beta = rng.normal(1.0, 0.2, channels), rng.normal(0.0, 0.2, channels)
    fused = model_module.FusedBatchNorm(momentum=0.9)
    reference = keras.layers.BatchNormalization(momentum=0.9)
    for layer in (fused, reference):
        layer.build((None, 5, 5, channels))
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
    for step in range(3):
        # Channels with different means and spreads, so a mix-up of axes would show.
        images = (rng.normal(size=(8, 5, 5, channels)) * np.arange(1, channels + 1)
                  + np.arange(channels)).astype("float32")
        # Training: normalised with the batch's statistics, moving averages updated.
        assert_close_in_float32(fused(images, training=True), reference(images, training=True),
                                n)
    # Keras' moving averages start from mean 0 and variance 1, which after three updates
    # still weigh 0.9^3; the fused layer's are bias-corrected (no initial value), and its
    # variance carries Bessel's correction n / (n - 1), n = 8 * 5 * 5 values per channel.
    start = 0.9 ** 3
    assert_close_in_float32(fused.moving_mean, reference.moving_mean / (1 - start), n)
    expected_variance = (reference.moving_variance - start) / (1 - start) * n / (n - 1)
    assert_close_in_float32(fused.moving_variance, expected_variance, n)
    assert float(fused.updates.numpy()) == 3
    # Inference: normalised with the moving statistics, which stay as they are.
    fused.moving_mean.assign(reference.moving_mean)
    fused.moving_variance.assign(reference.moving_variance)
    moving_mean = fused.moving_mean.numpy()
    assert_close_in_float32(fused(images, training=False), reference(images, training=False), n)
    np.testing.assert_array_equal(fused.moving_mean.numpy(), moving_mean)
    # Gradients with respect to the input, the scale and the offset agree too.
    import tensorflow as tf

    weights = tf.constant(rng.normal(size=images.shape).astype("float32"))
    gradients = []
    for layer in (fused, reference):
        inputs = tf.constant(images)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            objective = tf.reduce_sum(layer(inputs, training=True) * weights)
        gradients.append(tape.gradient(objective, [inputs, layer.gamma, layer.beta]))
    for ours, theirs in zip(*gradients):
        assert_close_in_float32(ours, theirs, n)


def _history(epochs):
    rng = np.random.default_rng(epochs)
    rows = []
    for epoch in range(1, epochs + 1):
        loss = 1.0 / epoch
        rows.append({
            "epoch": epoch, "train_loss": loss, "train_accuracy": 0.9 + 0.09 * (1 - loss),
            "val_loss": loss * 1.1, "val_accuracy": 0.9 + 0.08 * (1 - loss) + rng.random() * 0.001,
            "test_loss": loss * 1.2, "test_accuracy": 0.9, "learning_rate": 1e-3 * loss,
            "seconds": 1.0,
        })
    return rows


def _decode_png(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(io.BytesIO(data), format="png")
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    return image


def test_fused_batch_norm_starts_its_moving_statistics_from_the_first_batch():
    layer = model_module.FusedBatchNorm(momentum=0.9)
    images = np.random.default_rng(2).normal(3.0, 0.5, size=(16, 4, 4, 2)).astype("float32")
    layer(images, training=True)
    # One update: that batch's statistics (mean near 3, variance near 0.25), where Keras'
    # average would hold 0.3 and 0.925. The kernel sums 256 float32 values per channel,
    # each addition rounding by at most 2^-24 of the running sum.
    bound = 256 * 2.0 ** -24
    np.testing.assert_allclose(layer.moving_mean, images.mean(axis=(0, 1, 2)), rtol=bound)
    np.testing.assert_allclose(layer.moving_variance, images.var(axis=(0, 1, 2), ddof=1),
                               rtol=2 * bound * 3.0 ** 2 / 0.25)


@pytest.mark.parametrize("epochs", [1, 2, 50])
def test_loss_accuracy_plot_is_a_png_for_short_and_long_histories(epochs):
    image = _decode_png(plots.loss_acc_visualizer(_history(epochs)))
    assert image[..., :3].std() > 0.05  # something was drawn


def test_a_one_epoch_plot_labels_each_point_with_its_value():
    history = _history(1)
    figure = plots.loss_acc_figure(history)
    labels = sorted(text.get_text() for axes in figure.axes for text in axes.texts)
    row = history[0]
    assert labels == sorted([
        f"train loss {row['train_loss']:.4f}", f"validation loss {row['val_loss']:.4f}",
        f"train accuracy {100 * row['train_accuracy']:.2f}%",
        f"validation accuracy {100 * row['val_accuracy']:.2f}%"])
    # With more epochs the curves speak for themselves.
    assert not [text for axes in plots.loss_acc_figure(_history(2)).axes for text in axes.texts]


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_confusion_matrix_plot_is_a_png(dataset):
    matrix = np.diag(np.full(10, 500)) + np.random.default_rng(0).integers(0, 5, (10, 10))
    names = dataset_utils.CLASS_NAMES[dataset]
    _decode_png(plots.confusion_matrix_visualizer(matrix, names, "epoch 3 (98.00%)"))


def test_metrics_files_are_built_from_history():
    history = _history(3)
    csv = cp_utils.metrics_csv_text(history).splitlines()
    assert csv[0] == ("epoch,train_loss,train_accuracy,val_loss,val_accuracy,"
                      "test_loss,test_accuracy,learning_rate,seconds")
    assert len(csv) == 4
    assert float(csv[2].split(",")[1]) == history[1]["train_loss"]  # full precision
    text = cp_utils.test_result_text(history)
    assert "90.00%" in text and "Best validation accuracy: epoch 3" in text


def test_reporter_shows_all_six_numbers():
    row = _history(2)[1]
    text = basic_utils.training_reporter(row, total_epochs=12, timing={"train": 0.5})
    assert text.splitlines() == [
        "Epoch  2/12  (1.0 s: train 0.5 s)",
        f"  train       loss {row['train_loss']:.4f}  accuracy {100 * row['train_accuracy']:6.2f}%",
        f"  validation  loss {row['val_loss']:.4f}  accuracy {100 * row['val_accuracy']:6.2f}%",
        f"  test        loss {row['test_loss']:.4f}  accuracy {100 * row['test_accuracy']:6.2f}%",
    ]


def test_resume_command_drops_overwrite():
    command = basic_utils.resume_command("code/main.py", ["--overwrite", "--epochs", "3"])
    assert command == "python code/main.py --epochs 3"


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_misclassified_grid_grows_with_its_mistakes_and_names_the_classes(dataset):
    names = dataset_utils.CLASS_NAMES[dataset]
    rng = np.random.default_rng(0)
    heights = []
    for count in (1, 6, 7, 36):
        png = plots.misclassified_visualizer(
            rng.integers(0, 256, (count, 28, 28)), rng.integers(0, 10, count),
            rng.integers(0, 10, count), rng.random(count), names, f"{count} mistakes")
        heights.append(_decode_png(png).shape[0])
    # Six tiles a row: one row for 1 and 6 mistakes, two for 7, six for 36.
    assert heights[0] == heights[1] < heights[2] < heights[3]
