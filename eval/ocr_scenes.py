"""The OCR benchmark's pictures: posters, shop signs, chat screenshots, receipts and memes.

Each scene draws the lines eval.ocr_text composes, in a Noto CJK face and size of its own
choosing, and returns the picture with the truth of what it drew: every line as drawn (in
traditional characters when the picture is), its simplified source, its size in pixels and face.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from eval import ocr_text
from eval.fonts import Face

MIN_PX = 14
Colour = tuple[int, int, int]


@dataclass(frozen=True)
class DrawnLine:
    text: str
    """As drawn (traditional characters in a traditional picture)."""
    source: str
    """The simplified line it was made from."""
    size: int
    """Font size in pixels, as drawn in the picture (before any rotation or blur)."""
    face: str


class Pen:
    """Writes lines on a picture in one script, remembering each as a DrawnLine."""

    def __init__(self, image: Image.Image, rng: random.Random, faces: Sequence[Face], convert: Callable[[str], str] | None):
        self.image, self.rng, self.faces, self.convert = image, rng, faces, convert
        self.draw = ImageDraw.Draw(image)
        self.lines: list[DrawnLine] = []

    def face(self, bold: bool | None = None, family: str | None = None) -> Face:
        chosen = [f for f in self.faces if (bold is None or (f.style == "Bold") == bold) and (family is None or f.family == family)]
        return self.rng.choice(chosen or list(self.faces))

    def fitted(self, text: str, face: Face, size: int, width: int) -> int:
        """`size`, made smaller (not below MIN_PX) until `text` fits in `width` pixels."""
        while size > MIN_PX and face.at(size).getlength(self.shown(text)) > width:
            size -= 2
        return max(size, MIN_PX)

    def write(self, xy: tuple[float, float], text: str, size: int, fill: Colour, face: Face, anchor: str = "la",
              stroke: int = 0) -> tuple[int, int, int, int]:
        """Draw `text` (a black outline `stroke` px wide, if any); returns its bounding box."""
        shown = self.shown(text)
        font = face.at(size)
        self.draw.text(xy, shown, font=font, fill=fill, anchor=anchor, stroke_width=stroke, stroke_fill=(0, 0, 0))
        self.lines.append(DrawnLine(shown, text, size, face.name))
        return tuple(int(v) for v in self.draw.textbbox(xy, shown, font=font, anchor=anchor, stroke_width=stroke))

    def shown(self, text: str) -> str:
        return self.convert(text) if self.convert else text


def contrasting(rng: random.Random) -> tuple[Colour, Colour]:
    """A background and a text colour far enough apart to read."""
    dark = tuple(rng.randint(0, 90) for _ in range(3))
    light = tuple(rng.randint(180, 255) for _ in range(3))
    return (dark, light) if rng.random() < 0.5 else (light, dark)


def poster(pen: Pen, rng: random.Random, background: Image.Image | None) -> None:
    width, height = pen.image.size
    back, ink = contrasting(rng)
    if background is not None and rng.random() < 0.5:  # a darkened photo behind light text
        pen.image.paste(ImageEnhance.Brightness(ImageOps.fit(background, pen.image.size)).enhance(0.35))
        ink = (255, 255, 255)
    else:
        pen.draw.rectangle((0, 0, width, height), fill=back)
    title, slogan, when, where = ocr_text.poster(rng)
    margin = width // 12
    y = height // 8
    for text, size, bold in ((title, rng.randint(56, 72), True), (slogan, rng.randint(28, 44), False),
                             (when, rng.randint(18, 30), False), (where, rng.randint(18, 30), False)):
        face = pen.face(bold=bold)
        box = pen.write((margin, y), text, pen.fitted(text, face, size, width - 2 * margin), ink, face)
        y = box[3] + rng.randint(height // 14, height // 8)


def sign(pen: Pen, rng: random.Random, background: Image.Image | None) -> None:
    width, height = pen.image.size
    board, ink = contrasting(rng)
    pen.draw.rectangle((0, 0, width, height), fill=board)
    pen.draw.rectangle((8, 8, width - 8, height - 8), outline=ink, width=4)
    name, *rest = ocr_text.sign(rng)
    face = pen.face(bold=True)
    box = pen.write((width // 2, height // 3), name, pen.fitted(name, face, rng.randint(48, 72), width - 80), ink, face, anchor="mm")
    y = box[3] + height // 10
    for text in rest:
        small = pen.face(bold=False)
        box = pen.write((width // 2, y), text, pen.fitted(text, small, rng.randint(20, 36), width - 80), ink, small, anchor="mt")
        y = box[3] + height // 20


def chat(pen: Pen, rng: random.Random, background: Image.Image | None) -> None:
    width, height = pen.image.size
    pen.draw.rectangle((0, 0, width, height), fill=(237, 237, 237))
    contact, messages = ocr_text.chat(rng)
    pen.draw.rectangle((0, 0, width, height // 14), fill=(247, 247, 247))
    title = pen.face(bold=True, family="Noto Sans CJK")
    pen.write((width // 2, height // 28), contact, rng.randint(28, 36) * width // 720, (20, 20, 20), title, anchor="mm")
    size = rng.randint(16, 32) * width // 720  # one text size for a whole screenshot, as on a phone
    face = pen.face(bold=False, family="Noto Sans CJK")
    y = height // 14 + size * 2
    for mine, text in messages:
        length = face.at(size).getlength(pen.shown(text))
        x = width - width // 8 - length if mine else width // 8
        pen.draw.rounded_rectangle((x - size * 0.7, y - size * 0.6, x + length + size * 0.7, y + size * 1.7),
                                   radius=size // 2, fill=(149, 236, 105) if mine else (255, 255, 255))
        pen.write((x, y), text, size, (25, 25, 25), face)
        y += size * 3.4
        if y > height - size * 3:
            break


def receipt(pen: Pen, rng: random.Random, background: Image.Image | None) -> None:
    width, height = pen.image.size
    pen.draw.rectangle((0, 0, width, height), fill=(250, 248, 240))
    size = rng.randint(MIN_PX, 22)
    face = pen.face(bold=False)
    y = size * 2
    for number, text in enumerate(ocr_text.receipt(rng)):
        ink = (rng.randint(20, 80),) * 3
        if number == 0:
            box = pen.write((width // 2, y), text, pen.fitted(text, face, size + 8, width - 40), ink, face, anchor="mt")
        else:
            box = pen.write((width // 10, y), text, size, ink, face)
        y = box[3] + size
    pen.image = pen.image.crop((0, 0, width, min(height, y + size * 2)))  # the paper ends after its last line


def meme(pen: Pen, rng: random.Random, background: Image.Image | None) -> None:
    width, height = pen.image.size
    if background is not None:
        pen.image.paste(ImageOps.fit(background, pen.image.size))
    (caption,) = ocr_text.meme(rng)
    face = pen.face(bold=True, family="Noto Sans CJK")
    size = pen.fitted(caption, face, rng.randint(40, 64), width - 40)
    y = height - size if rng.random() < 0.6 else size
    pen.write((width // 2, y), caption, size, (255, 255, 255), face, anchor="mm", stroke=max(2, size // 12))


SCENES: dict[str, tuple[Callable[[Pen, random.Random, Image.Image | None], None], tuple[tuple[int, int], ...]]] = {
    "poster": (poster, ((900, 1260), (1080, 1440), (1240, 1754), (1600, 2200), (2400, 3200))),
    "sign": (sign, ((900, 300), (1200, 400), (1600, 520), (3000, 1000))),
    "chat": (chat, ((720, 1280), (1080, 1920))),
    "receipt": (receipt, ((480, 1000), (576, 1200))),
    "meme": (meme, ((600, 600), (800, 700))),
}
"""Each scene: how it draws, and the canvas sizes it is drawn at (what such pictures measure; the
largest poster and sign are as a phone photographs them, where the same text is a smaller part)."""
