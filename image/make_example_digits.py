"""Draw the example digits of the README's `predict` example: pen strokes on paper, made here
(no MNIST image is copied). Run: python image/make_example_digits.py"""

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples")


def strokes(size, lines, width, ink=30, paper=245, arcs=()):
    page = Image.new("L", size, paper)
    draw = ImageDraw.Draw(page)
    for points in lines:
        draw.line(points, fill=ink, width=width, joint="curve")
    for box, start, end in arcs:
        draw.arc(box, start, end, fill=ink, width=width)
    return page.filter(ImageFilter.GaussianBlur(1.5))


def main():
    os.makedirs(HERE, exist_ok=True)
    # A seven on white paper, as a phone scan might give it.
    seven = strokes((320, 400), [[(70, 80), (250, 80), (150, 340)], [(120, 210), (220, 210)]],
                    width=22)
    seven.save(os.path.join(HERE, "seven.png"))
    # A three on grey, unevenly lit paper with some noise, saved as JPEG.
    three = strokes((300, 360), [], width=20, ink=60, paper=200,
                    arcs=[((70, 40, 230, 180), 200, 90), ((60, 170, 240, 330), 270, 160)])
    rng = np.random.default_rng(0)
    light = np.linspace(-25, 25, three.size[0])[np.newaxis, :]
    pixels = np.asarray(three, float) + light + rng.normal(0, 6, (three.size[1], three.size[0]))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
        os.path.join(HERE, "three.jpg"), quality=85)
    # A zero drawn in white on a dark board.
    zero = strokes((260, 340), [], width=24, ink=235, paper=25, arcs=[((50, 40, 210, 300), 0, 360)])
    zero.convert("RGB").save(os.path.join(HERE, "zero.png"))
    # A four as blue ink with a transparent background (RGBA).
    four = strokes((300, 300), [[(190, 40), (60, 190), (240, 190)], [(190, 40), (190, 270)]],
                   width=20)
    alpha = 255 - np.asarray(four)
    rgba = np.zeros((300, 300, 4), np.uint8)
    rgba[..., 2] = 160
    rgba[..., 3] = alpha
    Image.fromarray(rgba, "RGBA").save(os.path.join(HERE, "four.png"))


if __name__ == "__main__":
    main()
