"""Crash-safe file writes: write beside, fsync, rename, fsync the directory.

A reader (or a process killed half-way) sees either the old file or the new one, never
a torn one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from retrieval.store.faults import kill_point

TEMPORARY_FILE = re.compile(r"\..+\.tmp-\d+")
"""The name of a file being written (`atomic_write`): a leftover once its writer is gone."""


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)`, then make its result appear at `path` in one step."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        kill_point(f"written:{path.name.split('.')[0].split('-')[0]}")  # e.g. written:catalog, not yet renamed
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
