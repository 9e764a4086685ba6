"""Finding the images to index: folders walked recursively, files taken as given."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from retrieval.errors import TusouError
from retrieval.faults import kill_point
from retrieval.images import IMAGE_EXTENSIONS, file_error_reason, is_image_path


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
    not exist is the user's error. Only regular files are taken: reading a FIFO or device
    that happens to be named `.jpg` would block the build forever.
    """
    for path in paths:
        if not os.path.lexists(path):
            raise TusouError(f"no such file or folder: {path}")
    found: dict[str, SourceFile] = {}
    skipped: list[Skipped] = []
    with tqdm(desc="scanning", unit=" files", disable=not progress, leave=False) as bar:
        for candidate in _walk(paths, skipped):
            bar.update()
            kill_point("scan")
            try:
                info = os.stat(candidate)
            except OSError as exc:
                skipped.append(Skipped(candidate, file_error_reason(exc)))
                continue
            if not stat.S_ISREG(info.st_mode):
                skipped.append(Skipped(candidate, "not a regular file (a pipe, socket or device)"))
                continue
            found[candidate] = SourceFile(candidate, info.st_size, info.st_mtime_ns)
    return dict(sorted(found.items())), skipped


def _walk(paths: list[str | Path], skipped: list[Skipped]):
    for root in paths:
        root = os.path.abspath(root)
        if not os.path.isdir(root):
            yield root
            continue
        on_error = lambda exc: skipped.append(Skipped(str(exc.filename or root), file_error_reason(exc)))
        for folder, dirs, files in os.walk(root, onerror=on_error):
            dirs.sort()
            for name in sorted(files):
                if is_image_path(name):
                    yield os.path.join(folder, name)


def describe_extensions() -> str:
    return ", ".join(sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS))
