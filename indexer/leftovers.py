"""Sweeping away what a killed writer left: files no commit names.

Every write of the store puts new files beside the old ones and names them in one commit (the
catalog's transaction; for a new or converted index, the manifest). A writer killed before its
commit leaves only files nothing names, and the next writer, holding the build lock, deletes
them here before it starts, so they never pile up or get mistaken for part of the index.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from indexer.segment_writer import SEGMENT_FILE, remove_unnamed
from retrieval.errors import TusouError
from retrieval.store.atomic import TEMPORARY_FILE
from retrieval.store.catalog import SEGMENTS_DIR, Catalog
from retrieval.store.manifest import MANIFEST, read_manifest
from retrieval.store.store import CATALOG

GENERATION_FILE = re.compile(r"(catalog\.\d+\.jsonl|embeddings\.\d+\.npy|index\.\d+\.faiss)")
"""A format-1 index's data files."""
CATALOG_FILES = (CATALOG, f"{CATALOG}-wal", f"{CATALOG}-shm", f"{CATALOG}-journal")
OWN_FILES = {".lock", "staging", SEGMENTS_DIR, *CATALOG_FILES}
"""What a build puts in its directory before the manifest makes it an index (a killed first build leaves them)."""


def check_out_dir(directory: Path) -> None:
    """Refuse to write into a file or into a folder of the user's that is not an index."""
    if directory.exists() and not directory.is_dir():
        raise TusouError(f"--out {directory} is a file, not a directory")
    foreign = {name for name in os.listdir(directory) if name not in OWN_FILES and not TEMPORARY_FILE.fullmatch(name)} if directory.is_dir() else set()
    if foreign and not (directory / MANIFEST).exists():
        raise TusouError(f"{directory} exists and is not a tusou index: choose a new or empty --out directory")


def remove_leftovers(directory: Path) -> list[str]:
    """Delete temporary files and every file of the store that the index as committed does not name.

    Only for a writer holding the build lock. With a format-2 manifest, that is the segment files no
    segment row names; with a format-1 one, its generation files the manifest does not name, and a
    half-done conversion (catalog.sqlite, segments/); with none, a creation killed before its
    manifest (the same). Returns the names removed, relative to `directory`.
    """
    manifest = read_manifest(directory) if (directory / MANIFEST).is_file() else None
    removed = _unlinked(directory, [p for folder in (directory, directory / "staging") for p in _files(folder) if TEMPORARY_FILE.fullmatch(p.name)])
    named = set(manifest.files.values()) if manifest else set()
    stale = [p for p in _files(directory) if GENERATION_FILE.fullmatch(p.name) and p.name not in named]
    if manifest is not None and manifest.segmented:  # format-1 files: a conversion killed after its commit
        return removed + _unlinked(directory, stale) + _unnamed_segment_files(directory)
    stale += [directory / name for name in CATALOG_FILES if (directory / name).is_file()]
    stale += [p for p in _files(directory / SEGMENTS_DIR) if SEGMENT_FILE.fullmatch(p.name) or TEMPORARY_FILE.fullmatch(p.name)]
    removed += _unlinked(directory, stale)
    if (directory / SEGMENTS_DIR).is_dir() and not any((directory / SEGMENTS_DIR).iterdir()):
        (directory / SEGMENTS_DIR).rmdir()
    return removed


@contextmanager
def removed_on_failure(directory: Path) -> Iterator[None]:
    """Around a writer's work under the build lock: if it fails (a full disk, an interrupt, a bad
    input), the files it wrote that no commit names are deleted on its way out, not left for the
    next writer. The error stays the one raised: a sweep that fails as well (a disk too full even
    to open the catalog, a damaged one) leaves them to the next writer's sweep."""
    try:
        yield
    except BaseException:
        try:
            remove_leftovers(directory)
        except (OSError, sqlite3.Error, TusouError):
            pass
        raise


def _unlinked(directory: Path, paths: list[Path]) -> list[str]:
    for path in paths:
        path.unlink(missing_ok=True)
    return [str(p.relative_to(directory)) for p in paths]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def _unnamed_segment_files(directory: Path) -> list[str]:
    """Segment files and deletion records that no segment row of the catalog names (a damaged
    catalog refuses here, deleting nothing)."""
    catalog = Catalog(directory / CATALOG)
    try:
        return [f"{SEGMENTS_DIR}/{name}" for name in remove_unnamed(directory, catalog.segments())]
    finally:
        catalog.close()
