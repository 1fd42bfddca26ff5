"""Turn a user's own image file into an MNIST-style input: 28x28 grey, bright ink on black.

The steps follow the way MNIST itself was prepared (LeCun, Bottou, Bengio and Haffner, 1998):
each digit was size-normalised to fit a 20x20 pixel box, keeping its aspect ratio, with
anti-aliasing, then placed in a 28x28 field so that its centre of mass lies at the centre of
the field. Before that, a photo or a scan needs what MNIST's scans already had: grey levels,
light ink on a dark background, and no background left. The module imports NumPy and Pillow
only, so that a command-line tool can use it without loading TensorFlow.
"""

import math
import os
import struct
import zlib

import numpy as np
from PIL import Image, ImageOps

INVERT_CHOICES = ("auto", "yes", "no")

# The side of the MNIST field and of the box that the digit's longer side is scaled to.
FIELD_SIDE = 28
BOX_SIDE = 20

# Where MNIST's digits have their centre of mass, in 0-based pixel indices (row and column).
# Measured on the 10,000 test digits: the mean is (13.99, 14.01) and every digit lies within
# half a pixel of 14, which is what a shift by whole pixels towards (14, 14) produces.
# LeCun et al. speak of "the center of the 28x28 field", which in these coordinates would be
# 13.5; the data say 14.
CENTRE_OF_MASS = 14.0

# The least ink contrast, as a fraction of the full grey range, that counts as a digit rather
# than a blank page: about 13 of 255 grey levels.
MINIMUM_CONTRAST = 0.05

# Pixels whose ink is above this fraction of the strongest ink define the digit's bounding
# box, the part that is scaled to 20 pixels. MNIST's own anti-aliased edges go down to 1/255,
# so any threshold drops some of them; a tenth keeps a saved MNIST digit as it was (mean
# correlation 0.9985 over 1,000 test digits) while it stays above the ringing that JPEG adds
# around strokes (at most 0.07 of the ink at quality 90), which would otherwise widen the box.
BOX_INK_FRACTION = 0.1

# How many robust standard deviations of the paper's grey level above it still count as
# background (paper grain, sensor noise) rather than ink.
NOISE_DEVIATIONS = 3.0

# Images whose longer side exceeds this are first shrunk by a whole factor (averaging blocks
# of pixels). The digit ends up 20 pixels tall anyway; this keeps a 12-megapixel photo from
# needing hundreds of megabytes of floats.
LARGEST_SIDE = 1024

# The ITU-R 601-2 luma weights, the ones Pillow's own conversion to mode "L" uses.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# Pillow's one-channel modes of 16 or 32 bits. Its conversion to 8 bits ("L") clips them at
# 255 instead of scaling, so they are read as 32-bit integers and scaled here.
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

# The EXIF tag that says how the camera was held.
_ORIENTATION_TAG = 0x0112


class ImageError(Exception):
    """A file that cannot be used as a digit image. The message says what is wrong with the
    file in one sentence, without its path, which the caller puts in front."""


def prepare_digit(path, invert="auto"):
    """Read an image file and return it as an MNIST digit, with a record of what was done.

    Args:
      path: the image file (PNG, JPEG or anything else Pillow reads), a str or path object.
      invert: "auto" decides from the paper's grey level whether the ink is dark on a
        light background (and then inverts it), "yes" always inverts, "no" never does.

    Returns:
      (digit, record). digit is a float32 array of shape [28, 28, 1] with values in [0, 1],
      ink bright on a background of 0, as in MNIST. record is a dict that can be written as
      JSON:
        "size": [width, height] of the image as stored in the file, in pixels;
        "mode": its Pillow mode as stored ("L", "RGB", "P", ...);
        "orientation": the EXIF orientation that was applied (1 when none);
        "composited_on": "white" or "black", the colour a transparent background was laid
          on, or None for an opaque image;
        "inverted": whether the grey levels were inverted;
        "background": the grey level taken as paper and removed, after any inversion, in
          [0, 1];
        "ink_box": [left, top, right, bottom] of the digit in the upright image, in its
          pixels (right and bottom exclusive);
        "scale": pixels of the result per pixel of the upright image;
        "field_box": [left, top, right, bottom] of the scaled digit in the 28x28 field.

    Raises:
      ValueError: invert is not one of INVERT_CHOICES.
      ImageError: the file is missing, empty, not an image, truncated, or holds no ink.
    """
    if invert not in INVERT_CHOICES:
        raise ValueError(f"invert must be one of {INVERT_CHOICES}, got {invert!r}")
    image, record = _read_image(path)
    luma, alpha, reduction = _luma_and_alpha(image)

    if alpha is None:
        record["composited_on"] = None
        ink, noise, inverted, background = _ink(luma, invert)
    else:
        # A drawing on a transparent background usually has dark strokes, which show on
        # white. Light strokes would vanish there, so an image that is blank on white, yet
        # has a shape in its transparency, is laid on black instead.
        try:
            record["composited_on"] = "white"
            ink, noise, inverted, background = _ink(luma * alpha + (1.0 - alpha), invert)
        except ImageError as on_white:
            if float(alpha.max() - alpha.min()) < MINIMUM_CONTRAST:
                raise
            record["composited_on"] = "black"
            try:
                ink, noise, inverted, background = _ink(luma * alpha, invert)
            except ImageError:
                # What went wrong on white is what the user can act on.
                raise on_white from None
    record["inverted"] = inverted
    record["background"] = round(background, 4)

    digit, placement = _normalise(ink, noise)
    # The box and scale are reported in the pixels of the upright image, not of its reduced
    # copy.
    placement["ink_box"] = [min(side * reduction, limit) for side, limit in
                            zip(placement["ink_box"], image.size * 2)]
    placement["scale"] = round(placement["scale"] / reduction, 6)
    record.update(placement)
    return digit[:, :, np.newaxis], record


def _read_image(path):
    """Open the file, decode all of it, and turn it upright by its EXIF orientation.

    Returns (image, record) with the record's "size", "mode" and "orientation".
    """
    try:
        if os.path.isdir(path):
            raise ImageError("it is a folder, not an image file")
        if os.path.getsize(path) == 0:
            raise ImageError("it is empty (0 bytes)")
    except FileNotFoundError:
        raise ImageError("it does not exist") from None
    except OSError as error:
        raise ImageError(f"it cannot be read ({error.strerror or error})") from None
    try:
        with Image.open(path) as image:
            record = {"size": list(image.size), "mode": image.mode}
            # Image.open reads only the header. Decoding every pixel here is what makes a
            # truncated or corrupt file fail now, with a clear message.
            image.load()
            orientation = image.getexif().get(_ORIENTATION_TAG, 1)
            record["orientation"] = orientation if orientation in range(1, 9) else 1
            upright = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError:
        raise ImageError("it has too many pixels to decode safely "
                         "(over Pillow's decompression-bomb limit)") from None
    except Image.UnidentifiedImageError:
        raise ImageError("it is not an image Pillow can read (PNG or JPEG expected)") from None
    except PermissionError:
        raise ImageError("it cannot be read (permission denied)") from None
    # Pillow's decoders report a damaged file in several ways: OSError ("image file is
    # truncated"), SyntaxError (a broken PNG chunk), and struct or zlib errors, among others.
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError,
            struct.error, zlib.error):
        raise ImageError("it is truncated or corrupt") from None
    if upright.width == 0 or upright.height == 0:
        raise ImageError("it holds no pixels (zero width or height)")
    return upright, record


def _luma_and_alpha(image):
    """The image's grey levels and opacity as float32 arrays of shape [height, width].

    Returns (luma, alpha, reduction): luma in [0, 1]; alpha in [0, 1], or None for an image
    without transparency; reduction, the whole factor the image was shrunk by (1 when its
    longer side is at most LARGEST_SIDE).
    """
    scale = 255.0
    if image.mode in _WIDE_GREY_MODES:
        image = image.convert("I")
        # A 16-bit file (PNG, TIFF) uses the range up to 65535; mode "I" also holds the
        # 8-bit values of some formats.
        scale = 65535.0 if image.getextrema()[1] > 255 else 255.0
    elif image.mode == "F":
        scale = 255.0 if image.getextrema()[1] > 1.0 else 1.0
    elif image.mode in ("1", "L"):
        image = image.convert("L")
    else:
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        try:
            image = image.convert("RGBA" if has_alpha else "RGB")
        except ValueError:
            raise ImageError(f"its colour mode {image.mode} cannot be converted to grey") \
                from None

    reduction = math.ceil(max(image.size) / LARGEST_SIDE)
    if reduction > 1:
        image = image.reduce(reduction)
    values = np.clip(np.asarray(image, dtype=np.float32) / scale, 0.0, 1.0)
    if values.ndim == 2:
        return values, None, reduction
    luma = values[:, :, :3] @ _LUMA_WEIGHTS
    if values.shape[2] == 3 or values[:, :, 3].min() == 1.0:
        return luma, None, reduction
    return luma, values[:, :, 3], reduction


def _border(values):
    """The pixels of the image's outer ring, 2% of its shorter side wide (at least 1)."""
    width = max(1, min(values.shape) // 50)
    return np.concatenate([
        values[:width].ravel(), values[-width:].ravel(),
        values[width:-width, :width].ravel(), values[width:-width, -width:].ravel(),
    ])


def _paper(grey):
    """The paper's grey level and its noise (a standard deviation), both in [0, 1].

    The paper is the level that covers most of the picture, counting the border as much as
    the whole: a weighted median in which the border pixels together weigh as much as all
    pixels together. Ink rarely covers half of either (MNIST's digits cover a fifth of
    their field), and when it does, it is in one of them only: a tight crop puts more ink
    in the whole than on the border, a glyph that fills a tiny image the other way round.
    """
    border = _border(grey)
    # Repeating the border as many times as it fits into the image gives it that weight,
    # and lets NumPy's median (a partition, not a sort) do the rest.
    repeats = max(1, round(grey.size / border.size))
    levels = np.concatenate([grey.ravel(), np.tile(border, repeats)])
    paper = float(np.median(levels))
    # 1.4826 times the median absolute deviation estimates a standard deviation without
    # being swayed by the strokes.
    return paper, 1.4826 * float(np.median(np.abs(levels - paper)))


def _level_lighting(grey):
    """`grey` with the paper's light made even, where it changes across the page.

    A photographed page is often lit from one side: the paper is brighter at one edge than
    at the other, and one paper level leaves a shadow of background behind as ink (or cuts
    faint strokes where the paper is bright). The light is modelled as a plane, which
    cannot take the shape of a stroke: fitted by least squares to the pixels near the
    current plane (the paper, whatever the ink's polarity), three times, each time keeping
    the pixels within NOISE_DEVIATIONS deviations of it. It is removed only when it varies
    across the page by more than the noise; an evenly lit image is returned as it is.
    """
    height, width = grey.shape
    # Every few pixels are plenty for three numbers, and keep a large page fast.
    step = max(1, int(math.sqrt(grey.size / 20000)))
    sample = grey[::step, ::step]
    rows, columns = np.mgrid[0:height:step, 0:width:step]
    design = np.stack([np.ones(sample.size), rows.ravel() / height, columns.ravel() / width],
                      axis=1)
    values = sample.ravel().astype(np.float64)
    plane = np.full(values.shape, np.median(values))
    coefficients = None
    for _ in range(3):
        residual = values - plane
        spread = max(1.4826 * float(np.median(np.abs(residual - np.median(residual)))), 1e-3)
        near = np.abs(residual - np.median(residual)) <= NOISE_DEVIATIONS * spread
        if near.sum() < 3:
            return grey
        coefficients = np.linalg.lstsq(design[near], values[near], rcond=None)[0]
        plane = design @ coefficients
    change = abs(coefficients[1]) + abs(coefficients[2])  # from one corner to the other
    if change <= NOISE_DEVIATIONS * spread:
        return grey
    full_rows, full_columns = np.mgrid[0:height, 0:width]
    light = coefficients[1] * full_rows / height + coefficients[2] * full_columns / width
    # The paper keeps its mean level; only its slope goes.
    return np.clip(grey - (light - light.mean()), 0.0, 1.0).astype(grey.dtype)


def _ink(grey, invert):
    """Ink in [0, 1], the strongest ink 1 and the background 0, from grey levels in [0, 1].

    Returns (ink, noise, inverted, background): the ink array; the level of ink up to which
    the paper's noise still reaches; whether the grey levels were inverted; and the
    background level that was removed (after any inversion).
    """
    grey = _level_lighting(grey)
    paper, noise = _paper(grey)
    if invert == "auto":
        # Paper nearer the brightest pixels than the darkest means dark ink, the opposite
        # of MNIST, whose digits are light strokes on black. Comparing with the image's own
        # extremes, rather than with mid-grey, also reads white paper photographed in dim
        # light.
        inverted = bool(float(grey.max()) - paper < paper - float(grey.min()))
    else:
        inverted = invert == "yes"
    values = 1.0 - grey if inverted else grey
    background = 1.0 - paper if inverted else paper
    ink = np.clip(values - (background + NOISE_DEVIATIONS * noise), 0.0, None)
    strongest = float(ink.max())
    if strongest < MINIMUM_CONTRAST and invert != "auto":
        # A forced polarity that is the wrong one leaves only paper, while the other one
        # would find ink (below the paper here). Saying so is more useful than calling the
        # image blank.
        if float((background - values).max()) - NOISE_DEVIATIONS * noise >= MINIMUM_CONTRAST:
            other = "no" if inverted else "yes"
            strokes = "light on a dark" if inverted else "dark on a light"
            raise ImageError(f"it holds no ink with invert {invert!r}: its strokes are "
                             f"{strokes} background, which invert 'auto' or {other!r} reads")
    if strongest == 0.0:
        raise ImageError("it holds no ink: the image is blank")
    if strongest < MINIMUM_CONTRAST:
        raise ImageError(f"it holds no ink: the image is blank or its strokes are too faint "
                         f"(contrast {strongest:.3f}, at least {MINIMUM_CONTRAST} needed)")
    # A faint pencil stroke becomes full contrast, like MNIST's strokes, whose strongest
    # pixels are 254 or 255 of 255. In a noisy photo, one pixel in a thousand is still
    # more than 3 deviations above the paper; the box counts only ink twice as far up.
    return ink / strongest, NOISE_DEVIATIONS * noise / strongest, inverted, background


def _normalise(ink, noise):
    """Scale the digit so that its longer side is 20 pixels and centre its mass in 28x28.

    Pixels above BOX_INK_FRACTION of the strongest ink, and above `noise` (the ink level up
    to which noise still reaches), define the digit's box.

    Returns (digit, placement): a float32 [28, 28] array, and the record's "ink_box",
    "scale" and "field_box" entries in the pixels of the ink array.
    """
    inked = ink > max(BOX_INK_FRACTION, noise)
    if not inked.any():
        raise ImageError("it holds no ink that stands out from the paper's noise (the "
                         "strokes are too faint, or the light too uneven)")
    rows = np.flatnonzero(inked.any(axis=1))
    columns = np.flatnonzero(inked.any(axis=0))
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    left, right = int(columns[0]), int(columns[-1]) + 1
    height, width = bottom - top, right - left
    scale = BOX_SIDE / max(height, width)
    new_height = min(BOX_SIDE, max(1, math.floor(height * scale + 0.5)))
    new_width = min(BOX_SIDE, max(1, math.floor(width * scale + 0.5)))

    patch = ink[top:bottom, left:right]
    if (new_height, new_width) != (height, width):
        # Lanczos is Pillow's sharpest anti-aliasing filter. It widens itself by the
        # shrinking factor, so that a large photo is averaged, not sampled. (Resampling a
        # margin of the faint ink around the box as well was measured to blur enlarged
        # digits slightly more, 0.945 against 0.947 correlation.)
        resized = Image.fromarray(np.ascontiguousarray(patch, dtype=np.float32), mode="F") \
            .resize((new_width, new_height), resample=Image.Resampling.LANCZOS)
        # Lanczos overshoots next to sharp edges; MNIST's grey levels stay in [0, 1].
        patch = np.clip(np.asarray(resized), 0.0, 1.0)

    # The centre of mass of the scaled digit within its patch, in 0-based pixel indices.
    mass = float(patch.sum())
    centre_row = float(patch.sum(axis=1) @ np.arange(new_height)) / mass
    centre_column = float(patch.sum(axis=0) @ np.arange(new_width)) / mass
    # MNIST moved its digits by whole pixels: their centres of mass spread evenly over half
    # a pixel either side of 14. A digit whose mass sits far to one side of its box would
    # be pushed off the field; it stops at the edge instead.
    field_top = min(max(math.floor(CENTRE_OF_MASS - centre_row + 0.5), 0),
                    FIELD_SIDE - new_height)
    field_left = min(max(math.floor(CENTRE_OF_MASS - centre_column + 0.5), 0),
                     FIELD_SIDE - new_width)

    digit = np.zeros((FIELD_SIDE, FIELD_SIDE), dtype=np.float32)
    digit[field_top:field_top + new_height, field_left:field_left + new_width] = patch
    placement = {
        "ink_box": [left, top, right, bottom],
        "scale": scale,
        "field_box": [field_left, field_top, field_left + new_width, field_top + new_height],
    }
    return digit, placement
