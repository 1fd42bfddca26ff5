"""Tests of digit_images: real MNIST digits, saved the ways users' files come, read back as MNIST.

The real-data tests take 200 digits of the MNIST test split, write each one as a file (PNG,
inverted, enlarged on a page, transparent, JPEG, rotated with an EXIF tag, a photo-like
page), prepare it again and compare it with the digit itself. The thresholds come from what
the method measured on these 200 digits (written beside each one), with a margin. The other
tests use small images drawn here: modes, shapes, polarity and the errors.
"""

import functools
import gzip
import io
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

import digit_images

DIGIT_COUNT = 200


@functools.lru_cache(maxsize=1)
def _read_test_digits(folder):
    """The first DIGIT_COUNT images of the MNIST test split, uint8 [N, 28, 28]."""
    with gzip.open(pathlib.Path(folder) / "t10k-images-idx3-ubyte.gz", "rb") as handle:
        data = handle.read()
    # An IDX file: a big-endian magic number (2051 for images), the count, rows and
    # columns, then the pixels row by row.
    magic, count, rows, columns = (int.from_bytes(data[start:start + 4], "big")
                                   for start in range(0, 16, 4))
    if (magic, rows, columns) != (2051, 28, 28):
        raise ValueError(f"not an MNIST image file: header {(magic, count, rows, columns)}")
    images = np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, rows, columns)
    return images[:DIGIT_COUNT].copy()


@pytest.fixture
def mnist_digits(real_mnist_dir):
    return _read_test_digits(real_mnist_dir)


def _prepared(path, invert="auto"):
    """prepare_digit's result as a [28, 28] array, after checking what every result shares."""
    digit, record = digit_images.prepare_digit(path, invert=invert)
    assert digit.shape == (28, 28, 1) and digit.dtype == np.float32
    assert digit.min() >= 0.0 and digit.max() <= 1.0
    json.dumps(record)
    return digit[:, :, 0], record


def _correlation(first, second):
    return float(np.corrcoef(first.ravel(), second.ravel())[0, 1])


def _fidelity(digits, write, folder):
    """How close each digit comes back after write(digit, folder) made a file of it.

    Returns mean absolute difference, mean correlation, and mean correlation after the best
    shift by at most one pixel each way. The last one tells a shape that is right but one
    pixel off (MNIST centres by whole pixels, so half a pixel of error in the centre of mass
    can round either way) from a shape that is wrong.
    """
    differences, correlations, shifted_correlations = [], [], []
    for digit in digits:
        original = digit / 255.0
        prepared, _ = _prepared(write(digit, folder))
        differences.append(np.abs(prepared - original).mean())
        correlations.append(_correlation(prepared, original))
        shifted_correlations.append(max(
            _correlation(np.roll(prepared, (rows, columns), axis=(0, 1)), original)
            for rows in (-1, 0, 1) for columns in (-1, 0, 1)))
    return np.mean(differences), np.mean(correlations), np.mean(shifted_correlations)


def _write_png(digit, folder):
    path = folder / "digit.png"
    Image.fromarray(digit).save(path)
    return path


def _write_inverted(digit, folder):
    path = folder / "inverted.png"
    Image.fromarray(255 - digit).save(path)
    return path


def _enlarged_page(digit, left=30, top=40):
    """The digit enlarged five times (bicubic) on a 200x220 black page, as a photo would
    show it: soft edges, many pixels per stroke, a margin."""
    page = Image.new("L", (200, 220), 0)
    page.paste(Image.fromarray(digit).resize((140, 140), Image.Resampling.BICUBIC),
               (left, top))
    return page


def _write_enlarged(digit, folder):
    path = folder / "enlarged.png"
    _enlarged_page(digit).save(path)
    return path


def _write_photo(digit, folder, light=0.04, paper_level=0.85, contrast=0.55, name="photo"):
    """A photo-like JPEG: the enlarged digit as grey ink on grey paper, with sensor noise
    and light that rises by 2 * `light` from the left edge to the right."""
    ink = np.asarray(_enlarged_page(digit), dtype=np.float64) / 255.0
    noise = np.random.default_rng(int(digit.sum())).normal(0.0, 0.02, ink.shape)
    slope = np.linspace(-light, light, ink.shape[1])[np.newaxis, :]
    paper = np.clip(paper_level - contrast * ink + noise + slope, 0.0, 1.0)
    path = folder / f"{name}.jpg"
    Image.fromarray((paper * 255).astype(np.uint8)).save(path, quality=85)
    return path


def _write_side_lit(digit, folder):
    """The photo-like page lit from one side: the paper is 0.24 brighter at its right edge
    than at its left, more than the ink's contrast leaves of the paper's level there."""
    return _write_photo(digit, folder, light=0.12, paper_level=0.75, contrast=0.5,
                        name="side_lit")


def _write_transparent(digit, folder):
    """Black ink whose opacity is the digit, on a fully transparent background."""
    pixels = np.zeros((28, 28, 4), dtype=np.uint8)
    pixels[:, :, 3] = digit
    path = folder / "transparent.png"
    Image.fromarray(pixels, mode="RGBA").save(path)
    return path


def _write_jpeg(digit, folder):
    path = folder / "digit.jpg"
    Image.fromarray(digit).save(path, quality=90)
    return path


def _write_rotated(orientation):
    """A writer that stores the digit turned so that EXIF `orientation` turns it upright."""
    def write(digit, folder):
        # Orientation 6 asks the viewer to turn the picture 90 degrees clockwise, 8 to
        # turn it counter-clockwise; np.rot90 turns counter-clockwise for k=1.
        stored = np.ascontiguousarray(np.rot90(digit, k=1 if orientation == 6 else -1))
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = folder / f"rotated_{orientation}.png"
        Image.fromarray(stored).save(path, exif=exif)
        return path
    return write


# ----- real MNIST digits ---------------------------------------------------------------


def test_saved_mnist_digits_come_back_as_they_were(mnist_digits, tmp_path):
    # Measured: mean absolute difference 0.0004, correlation 0.9990. Four digits in five
    # come back exactly; the others had an edge line fainter than BOX_INK_FRACTION (a
    # tenth of the strongest ink), so their box is a pixel short and they are scaled up.
    difference, correlation, _ = _fidelity(mnist_digits, _write_png, tmp_path)
    assert difference < 0.002
    assert correlation > 0.995
    exact = sum(np.abs(_prepared(_write_png(digit, tmp_path))[0] - digit / 255.0).max() < 0.01
                for digit in mnist_digits)
    assert exact >= 140  # measured: 160 of the 200


def test_centre_of_mass_lands_where_mnist_puts_it(mnist_digits, tmp_path):
    rows = np.arange(28)
    for digit in mnist_digits[:50]:
        prepared, _ = _prepared(_write_enlarged(digit, tmp_path))
        mass = prepared.sum()
        centre = ((prepared.sum(axis=1) @ rows) / mass, (prepared.sum(axis=0) @ rows) / mass)
        # MNIST's own digits are all within half a pixel of (14, 14).
        assert np.all(np.abs(np.array(centre) - 14.0) <= 0.5 + 1e-6), centre


@pytest.mark.parametrize("write", [_write_inverted, _write_transparent,
                                   _write_rotated(6), _write_rotated(8)],
                         ids=["inverted", "transparent", "exif-6", "exif-8"])
def test_lossless_variants_give_the_plain_result(mnist_digits, tmp_path, write):
    for digit in mnist_digits[:100]:
        plain, _ = _prepared(_write_png(digit, tmp_path))
        variant, record = _prepared(write(digit, tmp_path))
        np.testing.assert_allclose(variant, plain, atol=1e-5)
    if write is _write_inverted:
        assert record["inverted"] is True
    elif write is _write_transparent:
        assert record["composited_on"] == "white" and record["inverted"] is True
    else:
        assert record["orientation"] in (6, 8) and record["size"] == [28, 28]


def test_jpeg_digits_come_back_close(mnist_digits, tmp_path):
    # Measured at quality 90: mean absolute difference 0.0036, correlation 0.996.
    difference, correlation, _ = _fidelity(mnist_digits, _write_jpeg, tmp_path)
    assert difference < 0.01
    assert correlation > 0.98


def test_enlarged_digits_come_back_close(mnist_digits, tmp_path):
    # Measured: mean absolute difference 0.028, correlation 0.947, and 0.966 after the
    # best one-pixel shift. Five-fold bicubic enlargement softens the edges, so the box
    # grows by almost a pixel of the result (104 page pixels instead of 100), and the
    # centre of mass rounds the other way for about a fifth of the digits.
    difference, correlation, shifted = _fidelity(mnist_digits, _write_enlarged, tmp_path)
    assert difference < 0.04
    assert correlation > 0.92
    assert shifted > 0.95


def test_photo_like_pages_come_back_close(mnist_digits, tmp_path):
    # Measured: mean absolute difference 0.033, correlation 0.952, and 0.971 after the
    # best one-pixel shift: the noise and the light that falls off cost little more than
    # the enlargement itself.
    difference, correlation, shifted = _fidelity(mnist_digits, _write_photo, tmp_path)
    assert difference < 0.05
    assert correlation > 0.92
    assert shifted > 0.95
    _, record = _prepared(_write_photo(mnist_digits[0], tmp_path))
    assert record["inverted"] is True and record["size"] == [200, 220]


def test_a_page_lit_from_one_side_is_levelled_first(mnist_digits, tmp_path):
    # Measured: mean absolute difference 0.034, correlation 0.952, 0.973 after the best
    # one-pixel shift. With one paper level for the whole page instead, none of the 200
    # digits was read: the light's slope made the paper's noise look larger than the ink.
    difference, correlation, shifted = _fidelity(mnist_digits, _write_side_lit, tmp_path)
    assert difference < 0.05
    assert correlation > 0.92
    assert shifted > 0.95


def test_place_on_the_page_does_not_matter(mnist_digits, tmp_path):
    for digit in mnist_digits[:20]:
        _enlarged_page(digit, left=0, top=0).save(tmp_path / "corner.png")
        _enlarged_page(digit, left=55, top=70).save(tmp_path / "middle.png")
        corner, corner_record = _prepared(tmp_path / "corner.png")
        middle, middle_record = _prepared(tmp_path / "middle.png")
        np.testing.assert_allclose(corner, middle, atol=1e-6)
    left, top, right, bottom = middle_record["ink_box"]
    assert 55 <= left and right <= 195 and 70 <= top and bottom <= 210


def test_large_photos_are_shrunk_first_and_report_their_own_pixels(mnist_digits, tmp_path):
    digit = mnist_digits[0]
    page = Image.new("L", (2100, 1500), 255)
    page.paste(Image.fromarray(255 - digit).resize((700, 700), Image.Resampling.BICUBIC),
               (1000, 400))
    page.save(tmp_path / "large.png")
    prepared, record = _prepared(tmp_path / "large.png")
    assert _correlation(prepared, digit / 255.0) > 0.85
    # One MNIST pixel is 25 of the page's, and the box is reported in the page's pixels.
    rows, columns = np.flatnonzero(digit.any(axis=1)), np.flatnonzero(digit.any(axis=0))
    expected = [1000 + 25 * columns[0], 400 + 25 * rows[0],
                1000 + 25 * (columns[-1] + 1), 400 + 25 * (rows[-1] + 1)]
    np.testing.assert_allclose(record["ink_box"], expected, atol=25)
    assert record["scale"] == pytest.approx(1 / 25, rel=0.05)


# ----- polarity ------------------------------------------------------------------------


def _two_digit_card():
    """Mid-grey card with a bright vertical stroke on the left and a dark horizontal one on
    the right: which one is ink depends on the polarity."""
    card = np.full((60, 80), 128, dtype=np.uint8)
    card[10:50, 15:19] = 255
    card[28:32, 45:70] = 0
    return Image.fromarray(card)


def test_forced_polarity_chooses_which_strokes_are_ink(tmp_path):
    _two_digit_card().save(tmp_path / "card.png")
    bright, bright_record = _prepared(tmp_path / "card.png", invert="no")
    dark, dark_record = _prepared(tmp_path / "card.png", invert="yes")
    assert bright_record["inverted"] is False and dark_record["inverted"] is True
    # The bright stroke is 40 tall and 4 wide, so it becomes 20 tall and 2 wide; the dark
    # one is 25 wide and 4 tall, so 20 wide and 3 tall.
    assert (bright > 0.5).any(axis=1).sum() == 20 and (bright > 0.5).any(axis=0).sum() == 2
    assert (dark > 0.5).any(axis=0).sum() == 20 and (dark > 0.5).any(axis=1).sum() == 3


def test_auto_polarity_reads_both_kinds_and_dim_paper(tmp_path):
    stroke = np.zeros((40, 30))
    stroke[5:35, 12:18] = 1.0
    for name, grey, inverted in [("light_on_dark", 0.1 + 0.8 * stroke, False),
                                 ("dark_on_light", 0.9 - 0.8 * stroke, True),
                                 ("dark_on_dim_paper", 0.45 - 0.35 * stroke, True)]:
        Image.fromarray((grey * 255).astype(np.uint8)).save(tmp_path / f"{name}.png")
        prepared, record = _prepared(tmp_path / f"{name}.png")
        assert record["inverted"] is inverted, name
        assert prepared.max() == pytest.approx(1.0)
        assert (prepared > 0.5).sum() == 20 * 4, name


def test_wrong_forced_polarity_says_so(mnist_digits, tmp_path):
    path = _write_png(mnist_digits[0], tmp_path)
    with pytest.raises(digit_images.ImageError, match="invert 'yes'.*light on a dark"):
        digit_images.prepare_digit(path, invert="yes")
    path = _write_inverted(mnist_digits[0], tmp_path)
    with pytest.raises(digit_images.ImageError, match="invert 'no'.*dark on a light"):
        digit_images.prepare_digit(path, invert="no")


@pytest.mark.parametrize("invert", ["yes", "no"])
def test_a_blank_page_is_blank_whatever_the_polarity(tmp_path, invert):
    Image.new("L", (30, 30), 255).save(tmp_path / "white.png")
    with pytest.raises(digit_images.ImageError, match="^it holds no ink: the image is blank$"):
        digit_images.prepare_digit(tmp_path / "white.png", invert=invert)


def test_unknown_invert_choice_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="'maybe'"):
        digit_images.prepare_digit(tmp_path / "never_opened.png", invert="maybe")


# ----- files that are not digits -------------------------------------------------------


def _message(path):
    with pytest.raises(digit_images.ImageError) as caught:
        digit_images.prepare_digit(path)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message and str(path) not in message
    # The error stands alone: no chained Pillow exception is printed under it.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__
    return message


def test_files_that_are_not_images_give_one_clear_sentence(tmp_path):
    (tmp_path / "notes.txt").write_text("seven\n")
    assert _message(tmp_path / "notes.txt") == \
        "it is not an image Pillow can read (PNG or JPEG expected)"

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)) \
        .save(buffer, format="PNG")
    (tmp_path / "half.png").write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    assert _message(tmp_path / "half.png") == "it is truncated or corrupt"

    (tmp_path / "empty.png").write_bytes(b"")
    assert _message(tmp_path / "empty.png") == "it is empty (0 bytes)"
    assert _message(tmp_path / "missing.png") == "it does not exist"
    assert _message(tmp_path) == "it is a folder, not an image file"


def test_an_image_with_too_many_pixels_is_refused(tmp_path, monkeypatch):
    Image.new("L", (100, 100), 0).save(tmp_path / "bomb.png")
    # Pillow refuses an image of over twice MAX_IMAGE_PIXELS before decoding it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert _message(tmp_path / "bomb.png").startswith("it has too many pixels")


def test_blank_and_faint_pages_hold_no_ink(tmp_path):
    Image.new("L", (50, 40), 255).save(tmp_path / "white.png")
    assert _message(tmp_path / "white.png") == "it holds no ink: the image is blank"
    Image.new("RGB", (50, 40), (0, 0, 0)).save(tmp_path / "black.jpg")
    assert _message(tmp_path / "black.jpg") == "it holds no ink: the image is blank"
    Image.new("RGBA", (50, 40), (0, 0, 0, 0)).save(tmp_path / "transparent.png")
    assert _message(tmp_path / "transparent.png") == "it holds no ink: the image is blank"

    faint = np.full((40, 40), 250, dtype=np.uint8)
    faint[10:30, 18:22] = 245  # 5 grey levels: a smudge, not a stroke
    Image.fromarray(faint).save(tmp_path / "faint.png")
    assert _message(tmp_path / "faint.png").startswith(
        "it holds no ink: the image is blank or its strokes are too faint")


def test_a_faint_pencil_stroke_becomes_full_contrast(tmp_path):
    page = np.full((40, 40), 240, dtype=np.uint8)
    page[8:32, 18:22] = 200  # 40 grey levels: light pencil
    Image.fromarray(page).save(tmp_path / "pencil.png")
    prepared, record = _prepared(tmp_path / "pencil.png")
    assert prepared.max() == pytest.approx(1.0)
    assert record["background"] == pytest.approx(1 - 240 / 255, abs=1e-3)


# ----- modes and shapes ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["P", "I;16", "LA", "PA-transparency", "1", "CMYK", "RGB"])
def test_image_modes_read_as_the_same_digit(tmp_path, mode):
    shape = np.zeros((30, 24), dtype=np.uint8)
    shape[3:27, 5:9] = 255
    shape[3:7, 5:20] = 255  # a 7 drawn with square strokes, white on black
    reference, _ = _prepared(_write_png(shape, tmp_path))
    path = tmp_path / "mode.png"
    if mode == "P":
        Image.fromarray(shape).convert("P").save(path)
    elif mode == "I;16":
        Image.fromarray(shape.astype(np.uint16) * 257).save(path)
    elif mode == "LA":
        # Black ink whose opacity is the shape: it reads as dark ink on white.
        Image.merge("LA", [Image.new("L", (24, 30), 0), Image.fromarray(shape)]).save(path)
    elif mode == "PA-transparency":
        # A palette image whose background colour is marked transparent.
        palette = Image.fromarray(np.where(shape > 0, 1, 0).astype(np.uint8), mode="P")
        palette.putpalette([200, 50, 50, 0, 0, 0])
        palette.save(path, transparency=0)
    elif mode == "1":
        Image.fromarray(shape).convert("1").save(path)
    elif mode == "CMYK":
        path = tmp_path / "mode.tif"
        Image.fromarray(shape).convert("CMYK").save(path)
    else:
        path = tmp_path / "mode.jpg"
        Image.fromarray(np.stack([shape] * 3, axis=-1)).save(path, quality=95)
    with Image.open(path) as stored:
        assert stored.mode.startswith(mode[:1])
    prepared, record = _prepared(path)
    assert _correlation(prepared, reference) > 0.99, record
    if mode in ("LA", "PA-transparency"):
        assert record["composited_on"] == "white" and record["inverted"] is True


def test_light_ink_on_a_transparent_background_is_laid_on_black(tmp_path):
    pixels = np.zeros((30, 30, 4), dtype=np.uint8)
    pixels[5:25, 13:17] = (255, 255, 255, 255)
    Image.fromarray(pixels, mode="RGBA").save(tmp_path / "white_ink.png")
    prepared, record = _prepared(tmp_path / "white_ink.png")
    assert record["composited_on"] == "black" and record["inverted"] is False
    assert (prepared > 0.5).any(axis=1).sum() == 20


def test_tiny_image_is_scaled_up_to_the_twenty_pixel_box(tmp_path):
    # A 5x7 bitmap-font "L": 7 rows tall, so it is scaled by 20/7 to 20 by 14.
    glyph = np.zeros((7, 5), dtype=np.uint8)
    glyph[:, 0] = 255
    glyph[6, :] = 255
    Image.fromarray(glyph).save(tmp_path / "tiny.png")
    # Its strokes cover more than half of its border: the paper is found from the border
    # and the whole image together.
    prepared, record = _prepared(tmp_path / "tiny.png")
    assert record["inverted"] is False
    left, top, right, bottom = record["field_box"]
    assert (right - left, bottom - top) == (14, 20)
    assert record["ink_box"] == [0, 0, 5, 7]
    # The vertical stroke is on the left and the foot at the bottom, as drawn.
    assert prepared[top:bottom, left].mean() > 0.5 and prepared[bottom - 1].sum() > 5


@pytest.mark.parametrize("horizontal", [True, False])
def test_aspect_ratio_is_kept(tmp_path, horizontal):
    page = np.zeros((60, 400), dtype=np.uint8)
    page[25:35, 50:350] = 255  # 300 by 10: becomes 20 by 1 (rounded from 0.67)
    if not horizontal:
        page = np.ascontiguousarray(page.T)
    Image.fromarray(page).save(tmp_path / "bar.png")
    prepared, record = _prepared(tmp_path / "bar.png")
    inked = prepared > 0.5
    long_side, short_side = (1, 0) if horizontal else (0, 1)
    assert inked.any(axis=short_side).sum() == 20
    assert inked.any(axis=long_side).sum() == 1
    assert record["scale"] == pytest.approx(20 / 300, rel=1e-5)


@pytest.mark.parametrize("heavy_corner", ["top-left", "bottom-right"])
def test_a_digit_heavy_on_one_side_stays_inside_the_field(tmp_path, heavy_corner):
    # A heavy block in one corner of the box and one lone pixel at the opposite corner:
    # centring the mass would push the box off the field, so it stops at the edge.
    shape = np.zeros((20, 20), dtype=np.uint8)
    shape[:6, :6] = 255
    shape[19, 19] = 128
    if heavy_corner == "bottom-right":
        shape = np.ascontiguousarray(shape[::-1, ::-1])
    page = np.zeros((40, 40), dtype=np.uint8)
    page[10:30, 10:30] = shape
    Image.fromarray(page).save(tmp_path / "heavy.png")
    prepared, record = _prepared(tmp_path / "heavy.png")
    start = 8 if heavy_corner == "top-left" else 0
    assert record["field_box"] == [start, start, start + 20, start + 20]
    np.testing.assert_allclose(prepared[start:start + 20, start:start + 20], shape / 255.0,
                               atol=1e-6)


def test_large_images_are_averaged_not_sampled(tmp_path):
    # A 200-pixel square of one-pixel checks is, at 20 pixels, an even 50 % grey, as
    # MNIST's anti-aliasing would make it. Picking single pixels would leave 0s and 1s.
    page = np.zeros((240, 240), dtype=np.uint8)
    checks = (np.add.outer(np.arange(200), np.arange(200)) % 2 * 255).astype(np.uint8)
    page[20:220, 20:220] = checks
    Image.fromarray(page).save(tmp_path / "checks.png")
    prepared, record = _prepared(tmp_path / "checks.png")
    left, top, right, bottom = record["field_box"]
    inside = prepared[top + 1:bottom - 1, left + 1:right - 1]
    np.testing.assert_allclose(inside, 0.5, atol=0.02)


def test_a_bold_digit_cropped_tightly_is_still_read(tmp_path):
    # A thick "0" that covers 61 % of its picture but only a quarter of the border: the
    # paper is found from both, so the ink is not taken for paper.
    rows, columns = np.mgrid[0:60, 0:60]
    radius = np.hypot(rows - 29.5, columns - 29.5)
    ring = ((radius < 30) & (radius > 14)).astype(np.float64)
    assert ring.mean() > 0.55
    Image.fromarray(((1.0 - ring) * 255).astype(np.uint8)).save(tmp_path / "zero.png")
    prepared, record = _prepared(tmp_path / "zero.png")
    assert record["inverted"] is True
    # The hole stays empty and the ring is bright.
    assert prepared[12:16, 12:16].max() < 0.05 and prepared[13:15, 6:8].min() > 0.9
