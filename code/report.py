"""The run's report page, report.html: one self-contained HTML string rendered from the run's data.

`report_html(record, history, latest, images)` is a pure function: the same config.json
record, history, latest metrics.json and PNG bytes give the same page, byte for byte (it
states which epoch it reflects, never when it was made). The page is one file that can be
mailed and read offline: the plots are embedded as base64 `data:` URIs, the styling is
inline, nothing is fetched from anywhere and nothing needs JavaScript. Links point only
relatively into the run directory (`epoch_0001/`, `metrics.csv`).

Every number of the epoch table carries its exact value, so a test can compare the page
with metrics.csv: each row is `<tr data-epoch="3">` and each cell
`<td data-column="val_accuracy" data-value="0.98123456789">98.12%</td>`, where data-value
is `repr(float(value))`, as metrics.csv writes it. The best epoch is `cp_utils.best_row`'s,
the one rule for it. This module imports no TensorFlow.
"""

import base64
import html
import math

import cp_utils
import run_layout
import run_record

# The epoch table's columns: history key, the group its header sits under (None: a
# column of its own), its header, and how its numbers are shown (`format_number`).
EPOCH_COLUMNS = (
    ("train_loss", "Train", "loss", "loss"),
    ("train_accuracy", "Train", "accuracy", "accuracy"),
    ("val_loss", "Validation", "loss", "loss"),
    ("val_accuracy", "Validation", "accuracy", "accuracy"),
    ("test_loss", "Test", "loss", "loss"),
    ("test_accuracy", "Test", "accuracy", "accuracy"),
    ("learning_rate", None, "Learning rate at its end", "learning_rate"),
    ("seconds", None, "Seconds", "seconds"),
)
# The record's settings in the order and words the page shows them; any other scalar
# key of the record follows under its own name, so a new setting is never hidden.
RECIPE_ROWS = (
    ("preset", "Preset"), ("model", "Model"), ("epochs", "Epochs planned"),
    ("batch_size", "Batch size"), ("optimizer", "Optimizer"),
    ("learning_rate", "Learning rate"), ("schedule", "Schedule"),
    ("augment", "Augmentation"), ("clean_epochs", "Last epochs without augmentation"),
    ("weight_average", "Weight average decay"), ("validation_fraction", "Validation fraction"),
    ("seed", "Seed"), ("deterministic", "Deterministic kernels"), ("precision", "Precision"),
    ("xla", "XLA"), ("checkpoint_every_steps", "Checkpoint every (steps)"),
)
DATA_ROWS = (
    ("dataset", "Dataset"), ("data_description", "Source"), ("data_source", "Source kind"),
    ("data_fingerprint", "Fingerprint"), ("num_train", "Training images"),
    ("num_validation", "Validation images"), ("num_test", "Test images"),
    ("class_names", "Classes"),
)
# Keys shown elsewhere on the page (versions) or that say nothing about the recipe.
UNLISTED_KEYS = {"versions", "program", "format_version", "data_dir", "run_dir",
                 # shown as one "Distribution" row
                 "distribute", "devices", "distribution", "distribution_changes"}
# The figures of the latest epoch: key in `images` -> its file name, what it shows.
FIGURES = {
    "losses_accs": (run_layout.LOSS_ACCURACY_FILE, "Loss and accuracy per epoch"),
    "confusion_matrix": (run_layout.CONFUSION_MATRIX_FILE, "Validation confusion matrix"),
    "misclassified": (run_layout.MISCLASSIFIED_FILE, "Misclassified validation images"),
}

STYLE = """
:root { color-scheme: light; }
body { margin: 0; background: #fff; color: #1f2328; line-height: 1.45;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
    "Noto Sans", "Liberation Sans", sans-serif; }
main { max-width: 64rem; margin: 0 auto; padding: 1rem 1.25rem 3rem; }
h1 { font-size: 1.6rem; margin: 0.5rem 0; overflow-wrap: anywhere; }
h2 { font-size: 1.2rem; margin: 2rem 0 0.6rem; padding-bottom: 0.2rem;
  border-bottom: 1px solid #d0d7de; }
h3 { font-size: 1rem; margin: 1rem 0 0.4rem; }
a { color: #0550ae; }
nav ul { padding: 0; margin: 0.5rem 0; list-style: none; display: flex; flex-wrap: wrap;
  gap: 0.25rem 1rem; }
.summary { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px;
  padding: 0.6rem 0.9rem; }
.summary p { margin: 0.2rem 0; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 0.3rem 0 0.8rem; font-variant-numeric: tabular-nums; }
caption { caption-side: bottom; text-align: left; color: #57606a; font-size: 0.85rem;
  padding-top: 0.3rem; }
th, td { border: 1px solid #d0d7de; padding: 0.25rem 0.55rem; vertical-align: top; }
thead th { background: #f6f8fa; text-align: center; }
tbody th { text-align: left; font-weight: 600; }
.number { text-align: right; white-space: nowrap; }
tr.best > * { background: #fff8c5; }
.mark { text-align: center; }
.definitions { display: grid; grid-template-columns: repeat(auto-fit, minmax(18rem, 1fr));
  gap: 0 1.5rem; }
.definitions th { font-weight: normal; color: #57606a; white-space: nowrap; }
.definitions td { overflow-wrap: anywhere; }
.confusion td { text-align: right; min-width: 2.6rem; }
.confusion .percent { display: block; font-size: 0.75rem; color: #57606a; }
.confusion .total { background: #f6f8fa; }
figure { margin: 0.5rem 0 1rem; }
figcaption { color: #57606a; font-size: 0.85rem; }
img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
.note { color: #57606a; font-style: italic; }
.folders { columns: 9rem; padding-left: 1.2rem; }
@media (max-width: 40rem) {
  main { padding: 0.5rem 0.6rem 2rem; }
  th, td { padding: 0.2rem 0.35rem; }
  h1 { font-size: 1.3rem; }
}
@media print {
  main { max-width: none; padding: 0; }
  .scroll { overflow: visible; }
  a { color: inherit; text-decoration: none; }
  h2, h3 { break-after: avoid; }
  figure, tr { break-inside: avoid; }
  nav { display: none; }
}
"""


def report_html(record, history, latest, images, run_name=None):
    """The report page of a run, as a string.

    `record` is the config.json dictionary, `history` the list of completed epochs' rows
    (epoch, train/val/test loss and accuracy as fractions, seconds, learning_rate),
    `latest` the newest epoch's metrics.json dictionary (its row, class_names,
    val_confusion_matrix, val_per_class, val_most_confused), and `images` maps
    "losses_accs", "confusion_matrix" and "misclassified" to that epoch's PNG bytes; a
    missing one is left out with a note. `run_name` (e.g. the run directory's name)
    titles the page.
    """
    record, history, latest, images = record or {}, list(history or []), latest or {}, images or {}
    title = f"Training report: {run_name}" if run_name else "Training report"
    sections = [
        _summary(record, history, latest),
        _navigation(),
        _epoch_section(history),
        _figure_section("losses", "Loss and accuracy", images, "losses_accs", latest),
        _confusion_section(record, latest, images),
        _per_class_section(latest),
        _most_confused_section(latest),
        _figure_section("misclassified", "Misclassified images", images, "misclassified", latest),
        _settings_section(record),
        _files_section(history),
        _versions_section(record),
    ]
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_escape(title)}</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
        "<main>",
        f"<h1>{_escape(title)}</h1>",
        *sections,
        "</main>",
        "</body>",
        "</html>",
        "",
    ])


# ----------------------------------------------------------------------------------------
# Numbers and strings
# ----------------------------------------------------------------------------------------


def format_number(kind, value):
    """How the page shows a number of `kind`: "loss" with 4 decimals, "accuracy" (a
    fraction) as a percentage with 2 decimals, "seconds" with 1 decimal, "learning_rate"
    with 4 significant digits."""
    value = float(value)
    if kind == "loss":
        return f"{value:.4f}"
    if kind == "accuracy":
        return f"{100 * value:.2f}%"
    if kind == "seconds":
        return f"{value:.1f}"
    if kind == "learning_rate":
        return f"{value:.4g}"
    raise ValueError(f"unknown kind of number {kind!r}")


def _escape(value):
    return html.escape(str(value), quote=True)


def _percent(fraction):
    """A fraction that may be None (undefined), as the page shows it."""
    return "—" if fraction is None else format_number("accuracy", fraction)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _setting_text(key, value):
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "—"
    if isinstance(value, int) and key.startswith("num_"):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value)
    return str(value)


# ----------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------


def _section(anchor, heading, *parts):
    return "\n".join([f'<section id="{anchor}">', f"<h2>{_escape(heading)}</h2>", *parts,
                      "</section>"])


def _summary(record, history, latest):
    """Which epoch the page reflects, and the best epoch by validation accuracy."""
    if not history:
        return '<div class="summary"><p>No epoch has completed yet.</p></div>'
    latest_epoch = latest.get("epoch", history[-1]["epoch"])
    planned = record.get("epochs")
    of_planned = f" of {planned} planned" if isinstance(planned, int) else ""
    lines = [f"<p>This page reflects epoch {_escape(latest_epoch)}{of_planned} "
             f"({len(history)} completed).</p>"]
    best = cp_utils.best_row(history)
    if best is not None:
        test = (f", {format_number('accuracy', best['test_accuracy'])} test accuracy"
                if _is_number(best.get("test_accuracy")) else "")
        lines.append(
            f'<p>Best validation accuracy: <a href="#epoch-{best["epoch"]}">epoch '
            f'{best["epoch"]}</a>, {format_number("accuracy", best["val_accuracy"])} '
            f"validation{test}. The best epoch is chosen on validation, never on test.</p>")
    return '<div class="summary">' + "".join(lines) + "</div>"


def _navigation():
    links = (("epochs", "Epochs"), ("losses", "Loss and accuracy"),
             ("confusion", "Confusion matrix"), ("per-class", "Per class"),
             ("confused", "Most confused"), ("misclassified", "Misclassified"),
             ("settings", "Settings"), ("files", "Files"), ("versions", "Versions"))
    items = "".join(f'<li><a href="#{anchor}">{text}</a></li>' for anchor, text in links)
    return f'<nav aria-label="Contents"><ul>{items}</ul></nav>'


def _epoch_section(history):
    if not history:
        return _section("epochs", "Epochs", '<p class="note">No epoch has completed yet.</p>')
    columns = [column for column in EPOCH_COLUMNS if any(column[0] in row for row in history)]
    best = cp_utils.best_row(history)
    rows = [_epoch_row(row, columns, row is best) for row in history]
    table = "\n".join([
        '<div class="scroll"><table class="epochs">',
        "<caption>Accuracy: the percentage of the split's images classified correctly. "
        "The highlighted row (★) has the best validation accuracy (of equal ones, the lower "
        "validation loss, then the earlier epoch); the epoch number opens its folder."
        "</caption>",
        _epoch_header(columns),
        "<tbody>", *rows, "</tbody>",
        "</table></div>",
    ])
    return _section("epochs", "Epochs", table)


def _epoch_header(columns):
    """Two header rows: the split names spanning their loss and accuracy, then those."""
    top = ['<th rowspan="2" scope="col">Epoch</th>']
    bottom = []
    index = 0
    while index < len(columns):
        group = columns[index][1]
        if group is None:
            top.append(f'<th rowspan="2" scope="col">{_escape(columns[index][2])}</th>')
            index += 1
            continue
        span = 1
        while index + span < len(columns) and columns[index + span][1] == group:
            span += 1
        top.append(f'<th colspan="{span}" scope="colgroup">{_escape(group)}</th>')
        bottom += [f'<th scope="col">{_escape(column[2])}</th>'
                   for column in columns[index:index + span]]
        index += span
    top.append('<th rowspan="2" scope="col">Best</th>')
    return ("<thead><tr>" + "".join(top) + "</tr><tr>" + "".join(bottom) + "</tr></thead>")


def _epoch_row(row, columns, is_best):
    epoch = int(row["epoch"])
    folder = run_layout.epoch_dir_name(epoch)
    cells = [f'<th scope="row" class="number" data-column="epoch" data-value="{epoch}">'
             f'<a href="{folder}/">{epoch}</a></th>']
    for key, _, _, kind in columns:
        value = row.get(key)
        if value is None:
            cells.append('<td class="number">—</td>')
        else:
            cells.append(f'<td class="number" data-column="{key}" '
                         f'data-value="{_escape(repr(float(value)))}">'
                         f"{_escape(format_number(kind, value))}</td>")
    cells.append('<td class="mark">★</td>' if is_best else '<td class="mark"></td>')
    attributes = f'id="epoch-{epoch}" data-epoch="{epoch}"' + (' class="best"' if is_best else "")
    return f"<tr {attributes}>" + "".join(cells) + "</tr>"


def _figure_section(anchor, heading, images, key, latest):
    return _section(anchor, heading, _figure(images, key, latest.get("epoch")))


def _figure(images, key, epoch):
    """The PNG embedded as a data: URI, or a note when the run has none for this epoch."""
    file_name, description = FIGURES[key]
    caption = description if epoch is None else f"{description} after epoch {epoch}"
    data = images.get(key)
    if not data:
        return (f'<p class="note">No {_escape(file_name)} was saved for this epoch, so this '
                "figure is left out.</p>")
    encoded = base64.b64encode(bytes(data)).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{encoded}" alt="{_escape(caption)}">'
            f"<figcaption>{_escape(caption)} ({_escape(file_name)})</figcaption></figure>")


def _class_names(record, latest, size):
    names = latest.get("class_names") or record.get("class_names") or []
    return [str(name) for name in names] if len(names) == size else [str(i) for i in range(size)]


def _confusion_section(record, latest, images):
    parts = [_figure(images, "confusion_matrix", latest.get("epoch"))]
    matrix = latest.get("val_confusion_matrix")
    if matrix:
        parts += ["<h3>As a table</h3>", _confusion_table(matrix, _class_names(record, latest,
                                                                                len(matrix)))]
    else:
        parts.append('<p class="note">The latest metrics.json holds no confusion matrix.</p>')
    return _section("confusion", "Validation confusion matrix", *parts)


def _confusion_table(matrix, names):
    """Counts, and under each the percentage of its true class (its row)."""
    header = ('<thead><tr><th scope="col">true \\ predicted</th>'
              + "".join(f'<th scope="col">{_escape(name)}</th>' for name in names)
              + '<th scope="col">total</th></tr></thead>')
    rows = []
    for true_index, counts in enumerate(matrix):
        total = sum(int(count) for count in counts)
        cells = [_confusion_cell(names, true_index, predicted_index, int(count), total)
                 for predicted_index, count in enumerate(counts)]
        rows.append(f'<tr data-true="{_escape(names[true_index])}"><th scope="row">'
                    f"{_escape(names[true_index])}</th>" + "".join(cells)
                    + f'<td class="total">{total:,}</td></tr>')
    return "\n".join([
        '<div class="scroll"><table class="confusion">',
        "<caption>Rows: the true class; columns: the prediction. Each cell: the count, "
        "and below it the percentage of its true class.</caption>",
        header, "<tbody>", *rows, "</tbody></table></div>",
    ])


def _confusion_cell(names, true_index, predicted_index, count, total):
    fraction = count / total if total else None
    percent = "—" if fraction is None else f"{100 * fraction:.1f}%"
    # Shade by the share of the true class: correct predictions blue, mistakes red, so
    # the large mistakes stand out at a glance (and the numbers stay for print).
    if fraction and true_index == predicted_index:
        style = f' style="background-color: rgba(9, 105, 218, {0.08 + 0.5 * fraction:.2f})"'
    elif fraction:
        style = f' style="background-color: rgba(207, 34, 46, {min(0.6, 0.12 + 2 * fraction):.2f})"'
    else:
        style = ""
    title = (f"true {names[true_index]}, predicted {names[predicted_index]}: "
             f"{count:,} of {total:,} ({percent})")
    return (f'<td data-predicted="{_escape(names[predicted_index])}" data-count="{count}"'
            f'{style} title="{_escape(title)}">{count:,}'
            f'<span class="percent">{percent}</span></td>')


def _per_class_section(latest):
    per_class = latest.get("val_per_class")
    if not per_class:
        return _section("per-class", "Validation metrics per class",
                        '<p class="note">The latest metrics.json holds no per-class metrics.</p>')
    rows = [_per_class_row(entry) for entry in per_class]
    table = "\n".join([
        '<div class="scroll"><table class="per-class">',
        "<caption>Precision: of the images predicted as the class, the share that are it. "
        "Recall: of the images of the class, the share found. Support: its validation images. "
        "— means undefined (a class never predicted, or absent).</caption>",
        '<thead><tr><th scope="col">Class</th><th scope="col">Precision</th>'
        '<th scope="col">Recall</th><th scope="col">F1</th><th scope="col">Support</th>'
        "</tr></thead>",
        "<tbody>", *rows, "</tbody></table></div>",
    ])
    return _section("per-class", "Validation metrics per class", table)


def _per_class_row(entry):
    """One class's precision, recall and F1 (percentages; — when undefined) and support."""
    cells = [f'<th scope="row">{_escape(entry["class"])}</th>']
    for key in ("precision", "recall", "f1"):
        value = entry.get(key)
        exact = "" if value is None else f' data-value="{_escape(repr(float(value)))}"'
        cells.append(f'<td class="number" data-column="{key}"{exact}>{_percent(value)}</td>')
    support = int(entry["support"])
    cells.append(f'<td class="number" data-column="support" data-value="{support}">'
                 f"{support:,}</td>")
    return f'<tr data-class="{_escape(entry["class"])}">' + "".join(cells) + "</tr>"


def _most_confused_section(latest):
    pairs = latest.get("val_most_confused")
    if pairs is None:
        body = '<p class="note">The latest metrics.json lists no confused pairs.</p>'
    elif not pairs:
        body = "<p>No validation image was misclassified.</p>"
    else:
        rows = [f'<tr><td>{_escape(pair["true"])}</td><td>{_escape(pair["predicted"])}</td>'
                f'<td class="number">{int(pair["count"]):,}</td></tr>' for pair in pairs]
        body = "\n".join([
            '<div class="scroll"><table class="confused">',
            '<thead><tr><th scope="col">True class</th><th scope="col">Predicted as</th>'
            '<th scope="col">Images</th></tr></thead>',
            "<tbody>", *rows, "</tbody></table></div>",
        ])
    return _section("confused", "Most confused pairs (validation)", body)


def _definition_table(heading, rows):
    body = "".join(f'<tr><th scope="row">{_escape(label)}</th><td>{_escape(text)}</td></tr>'
                   for label, text in rows)
    return f"<div><h3>{_escape(heading)}</h3><table><tbody>{body}</tbody></table></div>"


def _settings_section(record):
    known = {key for key, _ in RECIPE_ROWS + DATA_ROWS} | UNLISTED_KEYS
    recipe = [(label, _setting_text(key, record[key])) for key, label in RECIPE_ROWS
              if key in record]
    if isinstance(record.get("distribution"), dict):
        recipe.append(("Distribution", run_record.describe_distribution(record["distribution"])
                       + (f" ({record['devices']})" if record.get("devices") else "")))
    for change in record.get("distribution_changes") or []:
        recipe.append(("Distribution changed", f"after epoch {change['after_epoch']}: "
                       f"{run_record.describe_distribution(change['from'])} -> "
                       f"{run_record.describe_distribution(change['to'])}"))
    # Settings this page does not know yet still appear, under their own names.
    recipe += [(key, _setting_text(key, record[key])) for key in sorted(record)
               if key not in known and not isinstance(record[key], dict)]
    data = [(label, _setting_text(key, record[key])) for key, label in DATA_ROWS if key in record]
    if not recipe and not data:
        return _section("settings", "Settings and data",
                        '<p class="note">The run has no config.json record.</p>')
    return _section("settings", "Settings and data", '<div class="definitions">'
                    + _definition_table("Recipe", recipe) + _definition_table("Data", data)
                    + "</div>")


def _files_section(history):
    folders = [run_layout.epoch_dir_name(int(row["epoch"])) for row in history]
    items = "".join(f'<li><a href="{name}/">{name}/</a></li>' for name in folders)
    run_files = (run_layout.CONFIG_FILE, run_layout.METRICS_FILE, run_layout.TEST_RESULT_FILE)
    files = ", ".join(f'<a href="{name}">{name}</a>' for name in run_files)
    parts = [f"<p>In the run directory beside this page: {files}.</p>"]
    if history:
        # The loop writes both before the page, once an epoch is published.
        parts.append(
            f'<p><a href="{run_layout.BEST_DIR}/">{run_layout.BEST_DIR}/</a>: the best '
            f"epoch's model ({run_layout.BEST_MODEL_FILE}, {run_layout.BEST_SAVED_MODEL_DIR}/, "
            f"{run_layout.BEST_RECORD_FILE}); <code>python code/main.py predict --run-dir "
            f"RUN IMAGE</code> classifies your own images with it. "
            f'<a href="{run_layout.TENSORBOARD_DIR}/">{run_layout.TENSORBOARD_DIR}/</a>: '
            "the TensorBoard logs (<code>tensorboard --logdir runs</code>).</p>")
    if items:
        parts += ["<p>Every epoch's folder (checkpoint, metrics.json and plots):</p>",
                  f'<ul class="folders">{items}</ul>']
    return _section("files", "Files", *parts)


def _versions_section(record):
    versions = record.get("versions")
    if not isinstance(versions, dict) or not versions:
        return _section("versions", "Library versions",
                        '<p class="note">The record names no library versions.</p>')
    return _section("versions", "Library versions",
                    _definition_table("As config.json records them",
                                      [(name, str(value)) for name, value in versions.items()]))
