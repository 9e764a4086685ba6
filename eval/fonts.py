"""The Chinese fonts the OCR benchmark draws with: Noto Sans CJK and Noto Serif CJK.

They are what a fresh machine can install (Debian and Ubuntu: `apt-get install fonts-noto-cjk`,
which the UI tests install too; elsewhere Google's Noto CJK downloads), and they cover simplified
and traditional characters alike (their SC and TC faces). Found by file name in the usual font
folders, each face picked out of its collection by name.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import ImageFont

from retrieval.errors import TusouError

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts", "/Library/Fonts", "~/Library/Fonts")
FAMILIES = ("Noto Sans CJK", "Noto Serif CJK")
FONTS_FIX = "install Noto Sans CJK and Noto Serif CJK (Debian/Ubuntu: apt-get install fonts-noto-cjk)"


@dataclass(frozen=True)
class Face:
    """One face of a font file: `Noto Serif CJK TC Bold` is family Noto Serif CJK, script TC, style Bold."""

    family: str
    script: str
    style: str
    path: Path
    index: int

    @property
    def name(self) -> str:
        return f"{self.family} {self.script} {self.style}"

    def at(self, size: int) -> ImageFont.FreeTypeFont:
        return _font(self.path, self.index, size)


@functools.lru_cache(maxsize=512)
def _font(path: Path, index: int, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size, index=index)


@functools.cache
def cjk_faces() -> tuple[Face, ...]:
    """Every simplified (SC) and traditional (TC) face of the Noto Sans and Serif CJK fonts installed.
    Both families must be there: the benchmark varies them."""
    faces = []
    for path in sorted(_font_files()):
        for index in range(16):  # a collection (.ttc) holds a face per region; a plain file holds one
            try:
                family, style = ImageFont.truetype(str(path), 12, index=index).getname()
            except OSError:
                break
            base, _, script = (family or "").rpartition(" ")
            if base in FAMILIES and script in ("SC", "TC"):
                faces.append(Face(base, script, style or "Regular", path, index))
    missing = [family for family in FAMILIES if not any(face.family == family for face in faces)]
    if missing:
        raise TusouError(f"the OCR benchmark draws with {' and '.join(FAMILIES)}; missing: {', '.join(missing)}: {FONTS_FIX}")
    return tuple(faces)


def _font_files() -> list[Path]:
    found = []
    for folder in FONT_DIRS:
        for root, _, names in os.walk(os.path.expanduser(folder)):
            found += [Path(root) / name for name in names if name.startswith(("NotoSansCJK", "NotoSerifCJK")) and name.lower().endswith((".ttc", ".otf", ".ttf"))]
    return found
