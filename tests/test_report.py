"""The report page: report_html on hand-made data, then the page in a real headless Chromium."""

import csv
import html.parser
import io

import pytest
from PIL import Image

import browser
import cp_utils
import report
import run_layout

CLASS_NAMES = ["zero", "<b>&", "two"]
# Epoch 2 has the best validation accuracy, epoch 3 by far the best test accuracy: the best
# epoch must still be 2 (chosen on validation only).
HISTORY = [
    {"epoch": 1, "train_loss": 0.912345678901, "train_accuracy": 0.7012345678901,
     "val_loss": 0.51234567, "val_accuracy": 0.8312345678901, "test_loss": 0.5298765432,
     "test_accuracy": 0.8287654321, "seconds": 12.3456789, "learning_rate": 0.0012345678},
    {"epoch": 2, "train_loss": 0.312345678901, "train_accuracy": 0.9012345678901,
     "val_loss": 0.21234567, "val_accuracy": 0.9512345678901234, "test_loss": 0.2298765432,
     "test_accuracy": 0.9387654321, "seconds": 10.04, "learning_rate": 0.003},
    {"epoch": 3, "train_loss": 0.212345678901, "train_accuracy": 0.9312345678901,
     "val_loss": 0.20234567, "val_accuracy": 0.9412345678901234, "test_loss": 0.1198765432,
     "test_accuracy": 0.9987654321, "seconds": 9.96, "learning_rate": 1.5e-05},
]
CONFUSION = [[5, 1, 0], [0, 4, 2], [1, 0, 3]]
LATEST = {
    **HISTORY[-1],
    "class_names": CLASS_NAMES,
    "val_confusion_matrix": CONFUSION,
    "val_per_class": [
        {"class": "zero", "precision": 5 / 6, "recall": 5 / 6, "f1": 5 / 6, "support": 6},
        {"class": "<b>&", "precision": 0.8, "recall": 4 / 6, "f1": 8 / 11, "support": 6},
        {"class": "two", "precision": None, "recall": 0.75, "f1": None, "support": 4},
    ],
    "val_most_confused": [{"true": "<b>&", "predicted": "two", "count": 2},
                          {"true": "zero", "predicted": "<b>&", "count": 1}],
}
RECORD = {
    "preset": "fast", "model": "convnet-fast", "epochs": 5, "batch_size": 128,
    "optimizer": "adam", "learning_rate": 0.003, "schedule": "one-cycle", "augment": False,
    "clean_epochs": 0, "weight_average": 0.0, "seed": 7, "dataset": "mnist",
    "precision": "float32", "data_source": "idx",
    "data_description": "IDX files in /data/<mnist>", "num_train": 54000,
    "num_validation": 6000, "num_test": 10000, "class_names": CLASS_NAMES,
    "versions": {"python": "3.11.2", "tensorflow": "2.99", "keras": "3.99"},
}


def _png(width, height, color):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


IMAGES = {"losses_accs": _png(40, 20, "navy"), "confusion_matrix": _png(30, 30, "teal"),
          "misclassified": _png(60, 24, "gray")}


class _Elements(html.parser.HTMLParser):
    """Every start tag of a page with its attributes, in order."""

    def __init__(self, page):
        super().__init__()
        self.elements = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def all(self, tag, **wanted):
        return [attributes for name, attributes in self.elements
                if name == tag and all(attributes.get(key) == value
                                       for key, value in wanted.items())]


def _page(images=IMAGES, run_name="run-<x>"):
    return report.report_html(RECORD, HISTORY, LATEST, images, run_name=run_name)


# ----------------------------------------------------------------------------------------
# The page as text
# ----------------------------------------------------------------------------------------


def test_every_epoch_is_a_row_that_links_to_its_folder():
    elements = _Elements(_page())
    assert [row["data-epoch"] for row in elements.all("tr") if "data-epoch" in row] == [
        "1", "2", "3"]
    links = [anchor["href"] for anchor in elements.all("a")]
    for epoch in (1, 2, 3):
        assert f"{run_layout.epoch_dir_name(epoch)}/" in links


def test_numbers_carry_their_exact_value_and_show_it_rounded():
    page = _page()
    assert ('<td class="number" data-column="val_accuracy" data-value="0.9512345678901234">'
            "95.12%</td>") in page
    assert 'data-column="train_loss" data-value="0.912345678901">0.9123</td>' in page
    assert 'data-column="seconds" data-value="10.04">10.0</td>' in page
    assert 'data-column="learning_rate" data-value="1.5e-05">1.5e-05</td>' in page
    assert "This page reflects epoch 3 of 5 planned" in page


def _best_rows(history):
    page = report.report_html(RECORD, history, LATEST, IMAGES)
    return [row["data-epoch"] for row in _Elements(page).all("tr") if row.get("class") == "best"]


def test_best_epoch_is_chosen_on_validation_never_on_test():
    assert _best_rows(HISTORY) == ["2"]
    assert "epoch 2</a>, 95.12% validation, 93.88% test accuracy. " in _page()


def test_best_epoch_of_equal_validation_accuracies_is_cp_utils_best_row():
    # The rule of best/ and test_result.txt: the lower validation loss, then the earlier.
    tied = [dict(row, val_accuracy=0.95) for row in HISTORY]
    assert _best_rows(tied) == ["3"] == [str(cp_utils.best_row(tied)["epoch"])]
    tied = [dict(row, val_accuracy=0.95, val_loss=0.25) for row in HISTORY]
    assert _best_rows(tied) == ["1"]


def test_strings_from_files_are_escaped():
    page = _page(run_name="<script>alert(1)</script>")
    assert "<b>&" not in page
    assert "&lt;b&gt;&amp;" in page  # the class name, in every table that names it
    assert "<script>" not in page
    assert "/data/&lt;mnist&gt;" in page
    assert not _Elements(page).all("b")


def test_nothing_is_referenced_outside_the_page_and_its_run_directory():
    page = _page()
    elements = _Elements(page)
    references = [attributes[key] for _, attributes in elements.elements
                  for key in ("src", "href") if key in attributes]
    assert references
    for reference in references:
        assert reference.startswith(("data:image/png;base64,", "#")) or (
            ":" not in reference and not reference.startswith("/")), reference
    assert not elements.all("script") and not elements.all("link")
    assert "url(" not in page and "@import" not in page


def test_a_missing_image_gives_a_note_instead_of_an_image():
    images = {key: value for key, value in IMAGES.items() if key != "misclassified"}
    elements = _Elements(_page(images))
    assert len(elements.all("img")) == 2
    assert all(image["src"].startswith("data:image/png;base64,") and len(image["src"]) > 40
               for image in elements.all("img"))
    assert (f"No {run_layout.MISCLASSIFIED_FILE} was saved for this epoch"
            in _page(images))
    assert len(_Elements(_page({})).all("img")) == 0


def test_confusion_matrix_table_shows_counts_and_row_percentages():
    page = _page()
    # True "<b>&" (6 images), predicted "two": 2 of them.
    assert ('data-predicted="two" data-count="2" style="background-color: rgba(207, 34, 46, '
            '0.60)" title="true &lt;b&gt;&amp;, predicted two: 2 of 6 (33.3%)">2'
            '<span class="percent">33.3%</span></td>') in page
    assert '<td class="number" data-column="precision">—</td>' in page  # "two" never predicted


def test_the_page_is_the_same_for_the_same_data():
    assert _page() == _page()
    assert report.report_html({}, [], {}, {}).startswith("<!DOCTYPE html>")


# ----------------------------------------------------------------------------------------
# The page in Chromium
# ----------------------------------------------------------------------------------------


def _expected_text(column, csv_value):
    """How the page should show a metrics.csv value, written out independently of report."""
    if column == "epoch":
        return csv_value
    value = float(csv_value)
    if column.endswith("_loss"):
        return f"{value:.4f}"
    if column.endswith("_accuracy"):
        return f"{100 * value:.2f}%"
    if column == "seconds":
        return f"{value:.1f}"
    if column == "learning_rate":
        return f"{value:.4g}"
    raise AssertionError(f"metrics.csv has a column the test does not know: {column}")


@pytest.fixture
def chromium():
    path = browser.chromium_path()
    if path is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium): the report "
                    "page cannot be checked in a browser")
    return path


def _write_run(tmp_path):
    page = tmp_path / run_layout.REPORT_FILE
    cp_utils.atomic_write(str(page), _page())
    cp_utils.atomic_write(str(tmp_path / run_layout.METRICS_FILE),
                          cp_utils.metrics_csv_text(HISTORY))
    return page


def test_report_loads_in_chromium_and_shows_metrics_csv(chromium, tmp_path):
    page = _write_run(tmp_path)
    screenshot = tmp_path / "report.png"
    result = browser.load_page(page, screenshot=screenshot, timeout=30)

    assert result["exceptions"] == []
    assert result["console_errors"] == []
    assert result["failed_requests"] == []
    assert result["requests"][0] == result["url"]
    assert all(url == result["url"] or url.startswith("data:") for url in result["requests"])
    assert result["title"] == "Training report: run-<x>"
    assert len(result["images"]) == 3
    assert all(image["complete"] and image["naturalWidth"] > 0 for image in result["images"])
    assert screenshot.stat().st_size > 10_000

    with open(tmp_path / run_layout.METRICS_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    cells = {(cell["epoch"], cell["column"]): cell for cell in result["cells"]}
    assert sorted({epoch for epoch, _ in cells}) == [row["epoch"] for row in rows]
    # Only the columns metrics.csv has: the page may show more, never other numbers.
    for row in rows:
        for column, value in row.items():
            cell = cells[(row["epoch"], column)]
            assert cell["value"] == value, (row["epoch"], column)
            assert cell["text"] == _expected_text(column, value), (row["epoch"], column)


def test_report_fits_a_phone_screen(chromium, tmp_path):
    result = browser.load_page(_write_run(tmp_path), width=390, height=844, timeout=30)
    # Wide tables scroll inside their own boxes; the page itself never scrolls sideways.
    assert result["page_width"] <= result["viewport_width"] == 390
    assert result["exceptions"] == [] and result["console_errors"] == []
