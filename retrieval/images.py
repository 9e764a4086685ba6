"""Opening images from users' collections: decode fast, fail with a reason, never crash.

Used by the indexer's workers, the query layer and the UI alike, so every image that
reaches a model went through the same steps: bounded size, JPEG draft decoding at the
model's resolution, EXIF orientation applied, alpha flattened onto white, RGB.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from retrieval.errors import TusouError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
MAX_PIXELS = 100_000_000
"""Images declaring more pixels than this are refused before decoding (decompression bombs)."""
ORIENTATION_TAG = 0x0112


class ImageError(Exception):
    """An image that cannot be used; the message is the reason, for the build's report."""


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def open_image(source: str | Path | bytes | Image.Image, min_size: int | None = None) -> Image.Image:
    """Decode `source` into an RGB image; `min_size` lets JPEGs decode at a reduced scale.

    Raises ImageError with a one-line reason for anything unreadable.
    """
    return decode(source, min_size)[0]


def decode(source: str | Path | bytes | Image.Image, min_size: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """The RGB image and the upright size of the original (before any draft reduction)."""
    if isinstance(source, Image.Image):
        return _to_rgb(source), source.size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(f"too large: {width}x{height} pixels (limit {MAX_PIXELS:,})")
            if image.getexif().get(ORIENTATION_TAG) in (5, 6, 7, 8):
                width, height = height, width
            if min_size and image.format == "JPEG":
                image.draft("RGB", (min_size, min_size))
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image)), (width, height)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except IsADirectoryError:
        raise ImageError("is a directory") from None
    except UnidentifiedImageError:
        raise ImageError("not an image (unknown or broken format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("too large: decompression bomb") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"broken image: {exc}".splitlines()[0]) from None


def load_query_image(image: str | Path | bytes | Image.Image, min_size: int | None = None) -> Image.Image:
    """`open_image` for a query: an unusable image is the user's error, one line."""
    try:
        return open_image(image, min_size=min_size)
    except ImageError as exc:
        name = "upload" if isinstance(image, (bytes, Image.Image)) else str(image)
        raise TusouError(f"cannot use image {name}: {exc}") from None


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
