"""Finding the images to index: folders walked recursively, files taken as given."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from retrieval.errors import TusouError
from retrieval.images import IMAGE_EXTENSIONS, is_image_path


@dataclass(frozen=True)
class SourceFile:
    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


def scan(paths: list[str | Path], progress: bool = True) -> tuple[dict[str, SourceFile], list[Skipped]]:
    """Every image file under `paths` by absolute path, and those that could not be looked at.

    Symlinked folders are not followed (no loops); symlinked files are. A path that does
    not exist is the user's error.
    """
    for path in paths:
        if not os.path.lexists(path):
            raise TusouError(f"no such file or folder: {path}")
    found: dict[str, SourceFile] = {}
    skipped: list[Skipped] = []
    with tqdm(desc="scanning", unit=" files", disable=not progress, leave=False) as bar:
        for candidate in _walk(paths, skipped):
            bar.update()
            try:
                stat = os.stat(candidate)
            except OSError as exc:
                skipped.append(Skipped(candidate, exc.strerror or type(exc).__name__))
                continue
            found[candidate] = SourceFile(candidate, stat.st_size, stat.st_mtime_ns)
    return dict(sorted(found.items())), skipped


def _walk(paths: list[str | Path], skipped: list[Skipped]):
    for root in paths:
        root = os.path.abspath(root)
        if not os.path.isdir(root):
            yield root
            continue
        for folder, dirs, files in os.walk(root, onerror=lambda exc: skipped.append(Skipped(exc.filename, exc.strerror))):
            dirs.sort()
            for name in sorted(files):
                if is_image_path(name):
                    yield os.path.join(folder, name)


def describe_extensions() -> str:
    return ", ".join(sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS))
