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

    box(axes, 0.3, 7.2, 3.2, 1.1, "main.py", "flags -> one Config\ncalls training_loop.run", "#fde2c7")
    box(axes, 4.2, 7.2, 3.6, 1.1, "training_loop.py", "wires the modules; the only place\nthat prints or writes", "#fde2c7")
    arrow(axes, (3.5, 7.75), (4.2, 7.75))

    box(axes, 0.3, 4.9, 3.6, 1.9, "learning_env_setting",
        "run directory (locked)\nconfig.json + settings guard\nLATEST -> epoch to resume")
    box(axes, 4.2, 4.9, 3.6, 1.9, "dataset_utils",
        "--data-dir IDX | tfds | packaged\nseeded validation split\nper-epoch order from (seed, epoch)\nbatch + augment inside the step")
    box(axes, 8.1, 4.9, 2.2, 1.9, "model", "convnet (4 conv+BN)\nconvnet-fast\nseed (original)")
    box(axes, 10.6, 4.9, 2.1, 1.9, "basic_utils", "seeding, signals,\nreporter,\nUserError")
    for x in (2.1, 6.0, 9.2, 11.65):
        arrow(axes, (6.0, 7.2), (x, 6.8))

    # The per-epoch loop.
    axes.add_patch(FancyBboxPatch((0.3, 1.95), 12.4, 2.45, boxstyle="round,pad=0.02,rounding_size=0.2",
                                  facecolor="#f4f4f4", edgecolor="#999999", linestyle="--"))
    axes.text(0.5, 4.2, "for epoch in start..N   (train_validation_test + cp_utils)",
              fontsize=9.5, fontweight="bold", va="center")
    steps = [
        ("go_train", "compiled steps,\none-cycle LR"),
        ("go_validation", "loss, accuracy,\n10x10 confusion"),
        ("go_test", "fresh test loss,\naccuracy"),
        ("training_reporter", "prints the\nepoch's block"),
        ("save_losses_model", "write .partial,\nrename, LATEST"),
    ]
    x = 0.55
    for index, (title, body) in enumerate(steps):
        box(axes, x, 2.2, 2.15, 1.55, title, body, "#e3f1df")
        if index:
            arrow(axes, (x - 0.3, 2.97), (x, 2.97))
        x += 2.45
    arrow(axes, (6.0, 4.9), (6.0, 4.4))

    # What is written.
    box(axes, 0.3, 0.2, 12.4, 1.45, "<run-dir>/",
        "config.json    metrics.csv    test_result.txt    LATEST  (names the newest complete epoch)\n"
        "epoch_0001/, epoch_0002/, ...  each:  checkpoint  (weights, optimizer state, epoch, history)   "
        "confusion_matrix.png   losses_accs.png   metrics.json", "#fff7d6")
    arrow(axes, (10.95, 2.2), (10.95, 1.65))
    return figure


if __name__ == "__main__":
    path = os.path.join(HERE, "flow_diagram.png")
    draw().savefig(path, dpi=100)
    print(f"wrote {path}")
