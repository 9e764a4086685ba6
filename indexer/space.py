"""A full disk during a write of the index: one line that names the directory and about how much
free space the write needs, instead of a traceback.

Whatever runs out of space — staging's chunks or records, a segment's vectors, ids or FAISS file, a
deletion record, the catalog's transaction or its WAL, a merge, a conversion — raises ENOSPC or
EDQUOT (OSError), SQLITE_FULL (sqlite3), or DiskFull (a catalog read). `reported`, around a whole
build or reindex, is the one place that turns any of them into a TusouError. Each step first says
what it is about to write, to the end of the write (`expect`): the figure reported is the latest.
By the time the line is raised the failed step left nothing: atomic_write unlinked its temporary
file, the transaction rolled back, and the writer's sweep (indexer.leftovers.removed_on_failure)
deleted the files no commit names; staged chunks stay, for the re-run to resume from.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from retrieval.errors import TusouError
from retrieval.sizes import format_size
from retrieval.store.full_disk import is_full_disk
from retrieval.store.index_types import INDEX_TYPES

MB = 1024**2
BLOCK = 4096
"""A file's last, partly filled block (and a .npy header)."""
SQLITE_ROW = 400
SQLITE_PATH_COPIES = 5
"""An items row with its indexes takes about 300 bytes plus 4.5 per byte of its path (the table and
the path index hold the path, and a catalog made before the trigger of catalog.py a UNIQUE index
too), measured at 20,000 rows; staging's records less."""
SQLITE_FIXED = 160 * 1024
"""A database's schema pages, again in its WAL, and the 32 KB WAL index (-shm)."""


@dataclass
class _Expected:
    bytes: int = 0


_expected: ContextVar[_Expected | None] = ContextVar("expected", default=None)


def expect(nbytes: int) -> None:
    """The step about to run, and the rest of the write after it, need about `nbytes` free."""
    expected = _expected.get()
    if expected is not None:
        expected.bytes = int(nbytes)


def path_bytes(paths: Iterable[str]) -> int:
    return sum(len(os.fsencode(path)) for path in paths)


def sqlite_bytes(rows: int, paths: int) -> int:
    """One transaction writing `rows` rows whose paths total `paths` bytes: its pages in the WAL, then
    again in the database file when they are checkpointed."""
    return 2 * (rows * SQLITE_ROW + paths * SQLITE_PATH_COPIES) + SQLITE_FIXED


def segment_bytes(rows: int, dim: int, index_type: str) -> int:
    """A segment's float16 vectors, int64 ids and FAISS file (`auto`: at most HNSW's bytes a vector)."""
    per_vector = INDEX_TYPES.get(index_type, INDEX_TYPES["hnsw"]).bytes_per_vector(dim, {})
    return int(rows * (2 * dim + 8 + per_vector)) + 3 * BLOCK


def staging_bytes(rows: int, paths: int, dim: int, chunk_rows: int) -> int:
    """`rows` images staged: float16 vectors in chunks of `chunk_rows`, and their records."""
    return rows * 2 * dim + (rows // max(chunk_rows, 1) + 1) * BLOCK + sqlite_bytes(rows, paths)


@contextmanager
def reported(directory: Path, rerun: str) -> Iterator[None]:
    """Around a write of the index at `directory`: a full disk anywhere inside is one TusouError line
    saying about how much free space is needed there, and `rerun` (what to do once it is free)."""
    expected = _Expected()
    token = _expected.set(expected)
    try:
        yield
    except (OSError, sqlite3.Error, TusouError) as exc:
        if not is_full_disk(exc):
            raise
        needed = format_size(max(expected.bytes, MB))
        raise TusouError(f"no space left on the disk holding {directory}: about {needed} free needed there; free some space and {rerun}") from exc
    finally:
        _expected.reset(token)
