"""Reading the text in an image: RapidOCR's PP-OCR models (shipped in its wheel) on onnxruntime.

The engine loads once per process, on first use, and offline: its detection and recognition
models are inside the `rapidocr` package. An image is shrunk first, so that its longer side is at
most MAX_SIDE pixels (JPEGs decode straight at a reduced scale): the detector's work grows with
the pixels. On the OCR benchmark set (bench/ocr.py, docs/performance.md) 1280 px read as many
lines exactly as RapidOCR does as it ships (whole image, a short side scaled up to 736 px) for 57%
of its CPU; 960 px cost 44% but missed lines in pictures of phone-photo size, 1600 px 70% for two
lines more in 536. Boxes come back in the original image's pixels (EXIF orientation applied, as
every image of tusou is shown).

One image that cannot be read (a broken file, an error inside the OCR) gives no lines and a
reason, never an exception: a build, a batch or a UI request goes on. Only a missing package is
an error, one line naming the fix.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from retrieval.errors import TusouError
from retrieval.images import ImageError, decode, fitted_size

MAX_SIDE = 1280
"""The longer side an image is shrunk to before OCR (see the module's docstring)."""
MAX_ASPECT = 8
OCR_FIX = "pip install 'tusou[ocr]'"


@dataclass(frozen=True)
class OcrLine:
    """One line of text as the OCR read it."""

    text: str
    box: tuple[tuple[float, float], ...]
    """Its four corners [x, y], clockwise from the top left, in the original image's pixels."""
    confidence: float

    def to_dict(self) -> dict:
        return {"text": self.text, "confidence": round(self.confidence, 4), "box": [[round(x, 1), round(y, 1)] for x, y in self.box]}


@dataclass(frozen=True)
class OcrResult:
    """The lines of one image, top to bottom; `reason` says why there are none when it could not be read."""

    lines: tuple[OcrLine, ...] = ()
    reason: str | None = None

    def to_json(self) -> str:
        """As a build stages it and a Ray task returns it: one text value."""
        return json.dumps({"lines": [[line.text, line.box, line.confidence] for line in self.lines], "reason": self.reason}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> OcrResult:
        found = json.loads(text)
        lines = (OcrLine(line, tuple((x, y) for x, y in box), confidence) for line, box, confidence in found["lines"])
        return cls(tuple(lines), found["reason"])


@functools.cache
def ocr_engine(max_side: int = MAX_SIDE, threads: int = 0):
    """The process's RapidOCR engine for images of at most `max_side` pixels, whose detector reads
    them at that size, never scaled up (RapidOCR's default scales a short side up to 736 px);
    `threads` for onnxruntime (0: its default, every core)."""
    require_ocr()
    import onnxruntime
    from rapidocr import RapidOCR

    onnxruntime.set_default_logger_severity(3)  # its warnings (thread affinity, graph fusions) are not the user's business
    logging.getLogger("RapidOCR").setLevel(logging.ERROR)
    settings: dict[str, object] = {"Global.log_level": "error", "Det.limit_type": "max", "Det.limit_side_len": max_side}
    if threads:
        settings |= {"EngineConfig.onnxruntime.intra_op_num_threads": threads, "EngineConfig.onnxruntime.inter_op_num_threads": 1}
    return RapidOCR(params=settings)


def _stout(image: Image.Image) -> Image.Image:
    """A long thin image padded (right or below, in its corner's colour) to at most MAX_ASPECT:1.
    RapidOCR scales a shorter side under 30 px up to 30, then pads what is wider than 8:1 to 4:1:
    a 1280x1 strip would become 38400x9630 pixels (a gigabyte). Text keeps its coordinates (the
    image stays at the top left)."""
    width, height = image.size
    if max(width, height) <= MAX_ASPECT * min(width, height):
        return image
    padded = Image.new("RGB", (max(width, math.ceil(height / MAX_ASPECT)), max(height, math.ceil(width / MAX_ASPECT))), image.getpixel((0, 0)))
    padded.paste(image)
    return padded


def require_ocr() -> None:
    """A missing package is one line now, before a build scans or starts its workers."""
    try:
        import onnxruntime  # noqa: F401
        import rapidocr  # noqa: F401
    except ImportError as exc:
        raise TusouError(f"reading text in images needs rapidocr and onnxruntime ({exc.name} is missing): {OCR_FIX}") from None


def read_text(source: str | Path | bytes | Image.Image, max_side: int = MAX_SIDE, threads: int = 0) -> OcrResult:
    """The lines of text in one image, read at most `max_side` pixels on its longer side."""
    ocr_engine(max_side, threads)  # a missing package is one line before any image is opened
    try:
        image, size = decode(source, longest=max_side)
    except ImageError as exc:
        return OcrResult(reason=str(exc))
    return read_decoded(image, size, max_side, threads)


def read_decoded(image: Image.Image, size: tuple[int, int], max_side: int = MAX_SIDE, threads: int = 0) -> OcrResult:
    """The lines of an image decoded already (a build's worker decodes once, for the model and the
    OCR), whose original is `size` (upright): shrunk to `max_side` first, boxes in the original's pixels."""
    engine = ocr_engine(max_side, threads)
    width, height = size
    if max(image.size) > max_side:
        image = image.resize(fitted_size(image.size, max_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    try:
        output = engine(_stout(image))
    except Exception as exc:  # noqa: BLE001 - whatever the model does wrong on one image costs that image only
        return OcrResult(reason=f"OCR failed: {type(exc).__name__}: {exc}".splitlines()[0])
    if not output.txts:
        return OcrResult()
    scale_x, scale_y = width / image.width, height / image.height
    return OcrResult(tuple(
        OcrLine(text, tuple((float(x) * scale_x, float(y) * scale_y) for x, y in box), float(score))
        for text, box, score in zip(output.txts, output.boxes.tolist(), output.scores)
    ))
