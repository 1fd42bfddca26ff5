"""The plots of a run, as PNG bytes: the confusion matrix and the loss/accuracy curves.

They are pure functions of their inputs (a matrix, a history list), so they can be redrawn
after a resume and tested without training. They use `matplotlib.figure.Figure` directly:
no pyplot, no global state, no display.
"""

import io

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def _margins(figure, left, right, bottom, top):
    """Fix the margins around the axes, in inches. Measuring the labels instead
    (tight_layout, or bbox_inches="tight" when saving) draws each figure a second time."""
    width, height = figure.get_size_inches()
    figure.subplots_adjust(left=left / width, right=1 - right / width,
                           bottom=bottom / height, top=1 - top / height)


def _png_bytes(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def confusion_matrix_visualizer(matrix, class_names, title):
    """PNG (bytes) of a confusion matrix: true labels on rows, predictions on columns.

    Every cell shows its count, in white on dark cells and black on light ones. Colours
    use a logarithmic-like scaling (square root) so that the few errors off the diagonal
    stay visible next to the large diagonal counts.
    """
    matrix = np.asarray(matrix)
    size = len(class_names)
    longest = max(len(name) for name in class_names)
    figure = Figure(figsize=(6.4 + 0.06 * longest, 5.6 + 0.06 * longest))
    # Room for the tick labels (rotated when names are long), axis labels, title, and on
    # the right for the colour bar, which takes its space from the axes.
    _margins(figure, left=0.4 + 0.07 * longest, right=0.8,
             bottom=0.55 + 0.055 * longest if longest > 2 else 0.6, top=0.4)
    axes = figure.add_subplot()
    shade = np.sqrt(matrix / max(matrix.max(), 1))
    image = axes.imshow(shade, cmap="Blues", vmin=0.0, vmax=1.0)
    for row in range(size):
        for column in range(size):
            count = int(matrix[row, column])
            axes.text(
                column, row, str(count), ha="center", va="center",
                fontsize=8 if count < 1000 else 7,
                color="white" if shade[row, column] > 0.55 else "black",
            )
    axes.set_xticks(range(size), labels=class_names, rotation=45 if longest > 2 else 0,
                    ha="right" if longest > 2 else "center")
    axes.set_yticks(range(size), labels=class_names)
    axes.set_xlabel("Predicted label")
    axes.set_ylabel("True label")
    axes.set_title(title)
    colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    ticks = np.linspace(0, 1, 5)
    colorbar.set_ticks(ticks, labels=[f"{int(round((t ** 2) * matrix.max()))}" for t in ticks])
    colorbar.set_label("count (square-root colour scale)")
    return _png_bytes(figure)


def _padded_limits(values, floor=None, ceiling=None):
    low, high = float(np.min(values)), float(np.max(values))
    span = high - low
    pad = span * 0.08 if span > 0 else max(abs(high) * 0.05, 1e-3)
    low, high = low - pad, high + pad
    if floor is not None:
        low = max(low, floor)
    if ceiling is not None:
        high = min(high, ceiling)
    return low, high


def loss_acc_visualizer(history):
    """PNG (bytes) of train and validation loss (left axis) and accuracy (right axis)
    over the epochs of `history` (rows as in metrics.csv)."""
    return _png_bytes(loss_acc_figure(history))


def loss_acc_figure(history):
    """The figure `loss_acc_visualizer` draws.

    Axes fit the data (no fixed 70-100% window); accuracy is shown in percent. With one
    epoch each of the four points is labelled with its name and value.
    """
    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(8.0, 4.8))
    # Room for both y-axes' labels, the title, and the legend below the x-axis label.
    _margins(figure, left=0.8, right=0.8, bottom=1.0, top=0.4)
    loss_axes = figure.add_subplot()
    accuracy_axes = loss_axes.twinx()
    # Markers only while they stay readable. Losses are circles (train filled, validation
    # hollow), accuracies larger hollow squares (train) and diamonds (validation), so that
    # points of the two axes that happen to coincide all stay visible.
    show_markers = len(epochs) <= 20
    large = len(epochs) <= 8
    loss_lines = [
        loss_axes.plot(epochs, [row[f"{split}_loss"] for row in history], color="tab:blue",
                       linestyle=style, marker="o" if show_markers else None,
                       markersize=6 if large else 4.5,
                       markerfacecolor=face, label=f"{name} loss")[0]
        for split, name, style, face in (("train", "train", "-", "tab:blue"),
                                         ("val", "validation", "--", "none"))
    ]
    accuracy_lines = [
        accuracy_axes.plot(epochs, [100 * row[f"{split}_accuracy"] for row in history],
                           color="tab:red", linestyle=style,
                           marker=marker if show_markers else None,
                           markersize=10 if large else 6.5,
                           markerfacecolor="none", label=f"{name} accuracy")[0]
        for split, name, style, marker in (("train", "train", "-", "s"),
                                           ("val", "validation", "--", "D"))
    ]
    if len(epochs) == 1:
        # One point per curve: line styles cannot tell them apart, so each is labelled,
        # losses to the left of the epoch and accuracies to the right.
        for axes, lines, side, text in ((loss_axes, loss_lines, -1, "{:.4f}"),
                                        (accuracy_axes, accuracy_lines, 1, "{:.2f}%")):
            for line in lines:
                value = line.get_ydata()[0]
                axes.annotate(f"{line.get_label()} {text.format(value)}", (epochs[0], value),
                              xytext=(side * 12, 0), textcoords="offset points", va="center",
                              ha="right" if side < 0 else "left", fontsize=8,
                              color=line.get_color())
    losses = [row[f"{split}_loss"] for row in history for split in ("train", "val")]
    accuracies = [100 * row[f"{split}_accuracy"] for row in history for split in ("train", "val")]
    loss_axes.set_ylim(*_padded_limits(losses, floor=0.0))
    accuracy_axes.set_ylim(*_padded_limits(accuracies, ceiling=100.0))
    last = epochs[-1]
    loss_axes.set_xlim(0.5, max(last, 1) + 0.5)
    if last <= 12:
        loss_axes.set_xticks(range(1, last + 1))
    else:
        loss_axes.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("loss (cross-entropy)", color="tab:blue")
    accuracy_axes.set_ylabel("accuracy (%)", color="tab:red")
    loss_axes.tick_params(axis="y", colors="tab:blue")
    accuracy_axes.tick_params(axis="y", colors="tab:red")
    loss_axes.grid(True, alpha=0.3)
    lines = loss_lines + accuracy_lines
    # Below the axes, so that the legend never hides a curve.
    loss_axes.legend(lines, [line.get_label() for line in lines], loc="upper center",
                     bbox_to_anchor=(0.5, -0.12), ncol=4, fontsize=8, frameon=False)
    final = history[-1]
    span = f"Epoch {last}" if last == 1 else f"Epochs 1-{last}"
    loss_axes.set_title(
        f"{span}: validation accuracy {100 * final['val_accuracy']:.2f}%, "
        f"loss {final['val_loss']:.4f}"
    )
    return figure


def misclassified_visualizer(images, labels, predictions, confidences, class_names, title):
    """PNG (bytes) of mistakes in a grid of six columns, in the order given (the caller
    puts the most confident first), each captioned with its true class, the predicted
    class and the probability the model gave that prediction.

    `images` are [N, 28, 28] or [N, 28, 28, 1] in [0, 1] or 0..255 (N up to 36 reads
    well); none gives a figure that says so. The tiles are one mosaic drawn as a single
    image with the captions beneath each tile: 36 separate axes take several times longer
    to draw.
    """
    images = np.asarray(images, dtype=np.float64)
    count = len(images)
    if count and images.max() > 1.0:
        images = images / 255.0
    images = images.reshape(count, 28, 28) if count else images
    columns = 6
    rows = max(1, -(-count // columns))
    tile, gap, caption = 28, 3, 10  # pixels of the mosaic: image, space, caption band
    cell_height = tile + gap + caption
    mosaic = np.ones((rows * cell_height, columns * (tile + gap) - gap))
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = row * cell_height, column * (tile + gap)
        # Ink dark on white, as digits are read on paper.
        mosaic[top:top + tile, left:left + tile] = 1.0 - images[index]
    width = 8.4  # inches of mosaic; the height follows from its shape
    figure = Figure(figsize=(width + 0.2, 0.5 + width * mosaic.shape[0] / mosaic.shape[1]))
    _margins(figure, left=0.1, right=0.1, bottom=0.1, top=0.4)
    axes = figure.add_subplot()
    axes.imshow(mosaic, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest",
                aspect="equal")
    axes.set_axis_off()
    axes.set_title(title, fontsize=10)
    if not count:
        axes.text(mosaic.shape[1] / 2, mosaic.shape[0] / 2, "no mistakes", ha="center",
                  va="center", fontsize=12)
    longest = max((len(name) for name in class_names), default=1)
    fontsize = 8 if longest <= 8 else 7
    for index in range(count):
        row, column = divmod(index, columns)
        x = column * (tile + gap) + tile / 2
        y = row * cell_height + tile + 1
        axes.text(x, y, f"true {class_names[int(labels[index])]}\n"
                        f"pred {class_names[int(predictions[index])]} "
                        f"{100 * float(confidences[index]):.0f}%",
                  ha="center", va="top", fontsize=fontsize, linespacing=1.1,
                  color="tab:red")
    return _png_bytes(figure)
