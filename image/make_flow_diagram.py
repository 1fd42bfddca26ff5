"""Draw image/flow_diagram.png: main -> modules, the per-epoch steps, and what is written where.

    python image/make_flow_diagram.py
"""

import os

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

HERE = os.path.dirname(os.path.abspath(__file__))


def box(axes, x, y, width, height, title, body="", color="#dbe9f6"):
    axes.add_patch(FancyBboxPatch((x, y), width, height, boxstyle="round,pad=0.02,rounding_size=0.15",
                                  facecolor=color, edgecolor="#355c7d", linewidth=1.2))
    axes.text(x + width / 2, y + height - 0.22, title, ha="center", va="top",
              fontsize=10, fontweight="bold", family="monospace")
    if body:
        axes.text(x + width / 2, y + height - 0.62, body, ha="center", va="top", fontsize=8.3,
                  linespacing=1.35)


def arrow(axes, start, end, text="", style="-|>", color="#355c7d"):
    axes.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=12,
                                   color=color, linewidth=1.2, shrinkA=2, shrinkB=2))
    if text:
        axes.text((start[0] + end[0]) / 2 + 0.08, (start[1] + end[1]) / 2, text, fontsize=7.5,
                  color="#555555", va="center")


def draw():
    figure = Figure(figsize=(13, 8.6))
    axes = figure.add_axes([0, 0, 1, 1])
    axes.set_xlim(0, 13)
    axes.set_ylim(0, 8.6)
    axes.axis("off")

    box(axes, 0.3, 7.2, 3.2, 1.1, "main.py", "flags -> one settings.Config\n"
        "(checked), --data-dir checked,\ncalls training_loop.run", "#fde2c7")
    box(axes, 4.2, 7.2, 8.5, 1.1, "training_loop.py",
        "load data -> open the run directory -> build or restore the TrainState -> "
        "train the epochs -> report\nit decides everything printed or written", "#fde2c7")
    arrow(axes, (3.5, 7.75), (4.2, 7.75))

    modules = [
        ("settings", "Config, presets,\nthe choices and\ntheir checks"),
        ("learning_env_setting", "run directory (locked),\nLATEST -> resume point\n"
                                 "+ run_layout (names)\n+ run_record (config.json)"),
        ("dataset_utils", "--data-dir IDX | tfds\n| packaged; split;\nbatches made and\n"
                          "augmented in the step"),
        ("model", "convnet, convnet-fast\n(conv + batch norm),\nseed (original)"),
        ("train_state", "TrainState: model,\noptimizer, weight\naverage, epoch, step"),
        ("basic_utils", "seeding, signals,\nreporter, UserError"),
    ]
    x, width = 0.3, 1.95
    for title, body in modules:
        box(axes, x, 4.9, width, 1.9, title, body)
        arrow(axes, (8.45, 7.2), (x + width / 2, 6.8))
        x += width + 0.14

    # The per-epoch loop.
    axes.add_patch(FancyBboxPatch((0.3, 1.95), 12.4, 2.45, boxstyle="round,pad=0.02,rounding_size=0.2",
                                  facecolor="#f4f4f4", edgecolor="#999999", linestyle="--"))
    axes.text(0.5, 4.2, "for epoch in state.epoch..N   (train_validation_test, then cp_utils "
              "and plots)",
              fontsize=9.5, fontweight="bold", va="center")
    steps = [
        ("go_train", "compiled steps,\none-cycle LR"),
        ("go_validation", "loss, accuracy,\n10x10 confusion"),
        ("go_test", "fresh test loss,\naccuracy"),
        ("training_reporter", "prints the\nepoch's block"),
        ("save_losses_model", "checkpoint + PNGs:\nwrite .partial,\nrename, LATEST"),
    ]
    x = 0.55
    for index, (title, body) in enumerate(steps):
        box(axes, x, 2.2, 2.15, 1.55, title, body, "#e3f1df")
        if index:
            arrow(axes, (x - 0.3, 2.97), (x, 2.97))
        x += 2.45
    arrow(axes, (6.55, 4.9), (6.55, 4.4))

    # What is written.
    box(axes, 0.3, 0.2, 12.4, 1.45, "<run-dir>/",
        "config.json    metrics.csv    test_result.txt    LATEST  (names the newest complete "
        "epoch)    in_progress.checkpoint  (mid-epoch)\n"
        "epoch_0001/, epoch_0002/, ...  each:  checkpoint  (every variable by name, epoch, "
        "history)   confusion_matrix.png   losses_accs.png   metrics.json", "#fff7d6")
    arrow(axes, (10.95, 2.2), (10.95, 1.65))
    return figure


if __name__ == "__main__":
    path = os.path.join(HERE, "flow_diagram.png")
    draw().savefig(path, dpi=100)
    print(f"wrote {path}")
