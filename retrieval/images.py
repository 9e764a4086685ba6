"""Opening images from users' collections: decode fast, fail with a reason, never crash.

Used by the indexer's workers, the query layer and the UI alike, so every image that
reaches a model went through the same steps: bounded size, JPEG draft decoding at the
model's resolution, EXIF orientation applied, alpha flattened onto white, RGB.
"""

from __future__ import annotations

import errno
import io
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from retrieval.errors import TusouError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
MAX_PIXELS = 100_000_000
"""Images declaring more pixels than this are refused before decoding (decompression bombs)."""
ORIENTATION_TAG = 0x0112
FILE_ERRORS = {
    errno.ENOENT: "file not found",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EISDIR: "is a directory",
    errno.ELOOP: "symlink loop",
    errno.ENAMETOOLONG: "file name too long",
}
"""Reasons for the ways opening a file fails, worded the same by the scan, the workers and queries."""


class ImageError(Exception):
    """An image that cannot be used; the message is the reason, for the build's report."""


class UnusableQueryImage(TusouError):
    """A query's image that cannot be used: the user's error, told apart by its type from the
    index's own (its image tower, the OCR's packages)."""


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def file_error_reason(exc: OSError) -> str:
    """A short lowercase reason for a file that cannot be opened (not the OS's capitalised strerror)."""
    return FILE_ERRORS.get(exc.errno) or (exc.strerror or type(exc).__name__).lower()


def _scaled_pixels(width: int, height: int, min_size: int) -> int:
    """Pixels once the shorter side is scaled to `min_size`, as the models' preprocessing does.

    A thin strip (say 1,000,000 x 1) is small on disk and in memory but becomes gigabytes
    when scaled up, so a worker would run out of memory and take the whole build down.
    """
    short, long = sorted((max(width, 1), max(height, 1)))
    return -(-long * min_size // short) * min_size


def _is_empty(source: str | Path | bytes) -> bool:
    """Whether `source` has no bytes at all: "empty file" says more than "not an image"."""
    try:
        return len(source) == 0 if isinstance(source, bytes) else os.path.getsize(source) == 0
    except OSError:
        return False


def open_image(source: str | Path | bytes | Image.Image, min_size: int | None = None) -> Image.Image:
    """Decode `source` into an RGB image; `min_size` lets JPEGs decode at a reduced scale
    (and refuses strips too thin to scale up to it).

    Raises ImageError with a one-line reason for anything unreadable.
    """
    return decode(source, min_size)[0]


def decode(
    source: str | Path | bytes | Image.Image,
    min_size: int | None = None,
    opened: Callable[[Image.Image], None] | None = None,
    longest: int | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """The RGB image and the upright size of the original (before any draft reduction).

    `opened` is shown the image as opened from `source`, before it is reduced, transposed or
    converted: the build reads its EXIF there, from the same open file. A JPEG decodes at a reduced
    scale whose shorter side still reaches `min_size` and (for OCR) whose longer side reaches `longest`.
    """
    if isinstance(source, Image.Image):
        return _to_rgb(source), source.size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(f"too large: {width}x{height} pixels (limit {MAX_PIXELS:,})")
            if min_size and _scaled_pixels(width, height, min_size) > MAX_PIXELS:
                raise ImageError(f"too large: {width}x{height} pixels, too long and thin to scale its short side to {min_size}")
            if opened:
                opened(image)
            if image.getexif().get(ORIENTATION_TAG) in (5, 6, 7, 8):
                width, height = height, width
            if (min_size or longest) and image.format == "JPEG":
                wanted = fitted_size(image.size, longest) if longest else (0, 0)
                image.draft("RGB", (max(wanted[0], min_size or 0), max(wanted[1], min_size or 0)))
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image)), (width, height)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("empty file" if _is_empty(source) else "not an image (unknown or broken format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("too large: decompression bomb") from None
    except OSError as exc:
        if exc.errno is not None:  # the file could not be read; Pillow's errors about the data carry no errno
            raise ImageError(file_error_reason(exc)) from None
        raise ImageError(f"broken image: {exc}".splitlines()[0]) from None
    except (SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"broken image: {exc}".splitlines()[0]) from None


def fitted_size(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """`size` scaled so that its longer side is `longest` (never up)."""
    scale = min(1.0, longest / max(size))
    return max(1, math.ceil(size[0] * scale)), max(1, math.ceil(size[1] * scale))


def load_query_image(image: str | Path | bytes | Image.Image, min_size: int | None = None) -> Image.Image:
    """`open_image` for a query: an unusable image is the user's error, one line."""
    try:
        return open_image(image, min_size=min_size)
    except ImageError as exc:
        name = "upload" if isinstance(image, (bytes, Image.Image)) else str(image)
        raise UnusableQueryImage(f"cannot use image {name}: {exc}") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB with transparency composited on white and 16-bit samples scaled, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.uint32)
        image = Image.fromarray((array >> 8 if array.max() > 255 else array).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")
