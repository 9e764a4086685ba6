"""Distinct, deterministic test images in the formats users have."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

FORMATS = ("jpg", "png", "webp", "bmp", "gif", "JPEG")


def format_of(path: str | Path) -> str:
    """The format an image file is, as its bytes say (not its name), spelled as the catalog spells formats."""
    with Image.open(path) as image:
        return {"MPO": "jpeg"}.get(image.format, image.format.lower())


def draw(seed: int, size: tuple[int, int] | None = None) -> Image.Image:
    rng = random.Random(seed)
    width, height = size or (rng.randint(48, 160), rng.randint(48, 160))
    image = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    pen = ImageDraw.Draw(image)
    for _ in range(rng.randint(2, 5)):
        x0, y0 = rng.randrange(width // 2), rng.randrange(height // 2)
        box = [x0, y0, x0 + rng.randint(8, width // 2), y0 + rng.randint(8, height // 2)]
        colour = tuple(rng.randrange(256) for _ in range(3))
        (pen.ellipse if rng.random() < 0.5 else pen.rectangle)(box, fill=colour)
    return image


def write_images(folder: Path, count: int, start: int = 0) -> list[Path]:
    """`count` images spread over a folder and a sub-folder, cycling through the formats."""
    paths = []
    for number in range(start, start + count):
        sub = folder / ("nested" if number % 4 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"image_{number:04d}.{FORMATS[number % len(FORMATS)]}"
        draw(number).save(path, quality=95) if path.suffix.lower() in (".jpg", ".jpeg", ".webp") else draw(number).save(path)
        paths.append(path)
    return paths


def png_bomb(path: Path, width: int = 30_000, height: int = 30_000) -> Path:
    """A tiny PNG whose header declares a huge image (a decompression bomb's calling card)."""
    import struct
    import zlib

    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    path.write_bytes(bytes(data))
    return path
