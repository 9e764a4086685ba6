"""The catalog of an index: one SQLite row per item, its metadata, and the segments' table.

SQLite (the standard library's, in WAL mode) is what makes a commit atomic: a build writes
its segment files first, then one transaction names them and changes the items, so a reader
sees the old set of segments or the new one, and a build killed before the transaction left
only files nothing names. Opening reads no item rows; lookups and filters are queries on
indexed columns.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.errors import TusouError
from retrieval.search.filters import Filters, distance_km

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    change_key TEXT,
    segment INTEGER NOT NULL,
    row INTEGER NOT NULL,
    taken TEXT,
    taken_from TEXT,
    taken_offset TEXT,
    camera TEXT,
    latitude REAL,
    longitude REAL,
    orientation INTEGER,
    format TEXT,
    folder TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS items_by_place ON items (segment, row);
CREATE INDEX IF NOT EXISTS items_by_taken ON items (taken);
CREATE INDEX IF NOT EXISTS items_by_format ON items (format);
CREATE INDEX IF NOT EXISTS items_by_camera ON items (camera COLLATE NOCASE);
CREATE INDEX IF NOT EXISTS items_by_location ON items (latitude, longitude);
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    count INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    files TEXT NOT NULL,
    index_entry TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
ITEM_COLUMNS = (
    "id", "path", "size", "mtime_ns", "sha256", "width", "height", "change_key", "segment", "row",
    "taken", "taken_from", "taken_offset", "camera", "latitude", "longitude", "orientation", "format", "folder",
)


@dataclass(frozen=True)
class SegmentRow:
    """One segment as the catalog names it: its files and its FAISS entry (type, params, tuned search)."""

    id: int
    count: int
    deleted: int
    files: dict[str, str]
    index_entry: dict


class Catalog:
    """A connection to `catalog.sqlite`, shared by the threads of one searcher (behind SQLite's own lock)."""

    def __init__(self, path: Path, *, create: bool = False):
        self.path = path
        if not create and not path.is_file():
            raise TusouError(f"{path.parent} is damaged: its catalog {path.name} is missing: {rebuild_hint(path.parent)}")
        try:
            self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")  # a commit survives power loss, as every other file does
            self.db.create_function("distance_km", 4, distance_km, deterministic=True)
            if create:
                self.db.executescript(SCHEMA)
            self.db.execute("SELECT count(*) FROM segments").fetchone()
        except sqlite3.DatabaseError as exc:
            raise TusouError(f"{path} is damaged ({exc}): {rebuild_hint(path.parent)}") from None

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic change: everything inside is committed together or not at all."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """Reads that must agree with each other (the segments and the rows they hold)."""
        self.db.execute("BEGIN")
        try:
            yield self.db
        finally:
            self.db.execute("COMMIT")

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM items").fetchone()[0]

    def segments(self, db: sqlite3.Connection | None = None) -> list[SegmentRow]:
        rows = (db or self.db).execute("SELECT id, count, deleted, files, index_entry FROM segments ORDER BY id")
        return [SegmentRow(id, count, deleted, json.loads(files), json.loads(entry)) for id, count, deleted, files, entry in rows]

    def state(self, key: str, default: int = 0) -> int:
        found = self.db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return found[0] if found else default

    def items(self, ids: Iterable[int]) -> dict[int, dict]:
        """The rows of `ids` (those still in the catalog), by id."""
        wanted = list(ids)
        found: dict[int, dict] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            query = f"SELECT {', '.join(ITEM_COLUMNS)} FROM items WHERE id IN ({', '.join('?' * len(chunk))})"
            found |= {row[0]: dict(zip(ITEM_COLUMNS, row)) for row in self.db.execute(query, chunk)}
        return found

    def matching_rows(self, filters: Filters) -> dict[int, np.ndarray]:
        """Segment → sorted rows of the items that pass `filters`."""
        where, params = filters.where()
        pairs = np.array(self.db.execute(f"SELECT segment, row FROM items WHERE {where}", params).fetchall(), dtype=np.int64)
        if not len(pairs):
            return {}
        pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
        segments, starts = np.unique(pairs[:, 0], return_index=True)
        return {int(s): rows for s, rows in zip(segments, np.split(pairs[:, 1], starts[1:]))}


def rebuild_hint(directory: Path) -> str:
    return f"delete {directory} and rebuild it with `tusou index PATH --out {directory}`"
