"""What a build commits, read from its staging as the commit goes: the staged records of the files it
commits, in path order, each with its id, and their vectors.

Nothing per image is held in the driver's memory. Which files the build commits goes into a temporary
table of the staging's SQLite connection (SQLite moves it to its temporary files past a few megabytes),
and the index's catalog is attached beside the records, so the order, the selection and the ids the
index had are SQLite's: each pass over the items is one query. A changed image keeps its id; new ones
are numbered from the index's next id, in path order. The vectors go into the new segment a chunk at
a time, each of the chunk's rows to the row of its item.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Iterator
from itertools import groupby
from operator import itemgetter
from pathlib import Path

import numpy as np

from indexer.sources import SourceFile
from indexer.staging import FIELDS, Staging
from retrieval.locations import MEMBER_SEPARATOR
from retrieval.store.catalog import name_of, name_value, paths_under
from retrieval.store.records import CatalogItem

PICKED = (
    "FROM pending p JOIN records r ON r.path = p.path AND r.size = p.size AND r.mtime_ns = p.mtime_ns "
    "AND r.change_key IS p.change_key LEFT JOIN previous.items i ON i.path = p.path"
)
"""The staged records of the files committed, stamped as the files are now, and the id each path had."""
ITEMS = f"SELECT {', '.join('r.' + name for name in FIELDS)}, i.id {PICKED} ORDER BY p.path"
PLACES = f"SELECT chunk, row, place FROM (SELECT r.chunk, r.row, row_number() OVER (ORDER BY p.path) - 1 AS place {PICKED}) ORDER BY chunk, row"
"""Where each staged vector goes in the new segment, chunk by chunk (SQLite sorts them, on disk past its cache)."""
COUNTS = f"SELECT count(*), count(i.id) {PICKED}"
KNOWN = "SELECT count(*) FROM pending p JOIN previous.items i ON i.path = p.path"


class StagedItems:
    """The new segment's items in row order (read again at each pass, never held: indexer.commit.Items),
    how many of them the index had already (`updated`), and their vectors (`fill`)."""

    def __init__(self, db: sqlite3.Connection, chunk: Callable[[int], Path], next_id: int):
        self._db = db
        self._chunk = chunk
        self._first_id = next_id
        self._count, self.updated = db.execute(COUNTS).fetchone()
        self.added = self._count - self.updated
        self.next_id = next_id + self.added
        """The first id no item has had, once these are in."""
        self.known = db.execute(KNOWN).fetchone()[0]
        """Files committed that the index had (changed ones, staged or not: one unreadable now leaves the index)."""

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[CatalogItem]:
        new_id = self._first_id
        for path, *rest, known in self._db.execute(ITEMS):
            if known is None:
                known, new_id = new_id, new_id + 1
            yield CatalogItem(name_of(path), **dict(zip(FIELDS[1:], rest)), id=known)

    def fill(self, out: np.ndarray) -> None:
        """out[row] = the staged vector of row's item, for every row, reading each chunk once."""
        for number, placed in groupby(self._db.execute(PLACES), key=itemgetter(0)):
            rows, places = zip(*((row, place) for _, row, place in placed))
            with np.load(self._chunk(number)) as data:
                out[list(places)] = data["vectors"][list(rows)]


def staged_items(staging: Staging, files: Collection[SourceFile], catalog: Path | None, next_id: int) -> StagedItems:
    """The items of committing `files` (the scanned files the index does not hold as they are) into the
    index whose catalog is at `catalog` (None: a new one): the staged records of those files with the
    stamp each has now, and of each shard listed only as it was read (`whole`), those of its members
    staged from it as it is now."""
    db = staging.db
    db.execute("DROP TABLE IF EXISTS temp.pending")
    db.execute("CREATE TEMP TABLE pending (path PRIMARY KEY, size, mtime_ns, change_key)")
    with db:
        db.executemany(
            "INSERT INTO pending VALUES (?, ?, ?, ?)", ((name_value(f.path), f.size, f.mtime_ns, f.change_key) for f in files if not f.whole)
        )
        for shard in (f for f in files if f.whole):
            where, params = paths_under(shard.path + MEMBER_SEPARATOR)
            db.execute(
                f"INSERT OR REPLACE INTO pending SELECT path, size, mtime_ns, change_key FROM records WHERE {where} AND change_key IS ?",
                [*params, shard.change_key],
            )
    _attach(db, catalog)
    return StagedItems(db, staging.chunk, next_id)


def _attach(db: sqlite3.Connection, catalog: Path | None) -> None:
    """The index's catalog as `previous`, for the ids its items keep (a new index: an empty one). It stays
    attached until the staging closes (a detach could fail on a cursor an error left open)."""
    if "previous" in {name for _, name, _ in db.execute("PRAGMA database_list")}:
        db.execute("DETACH DATABASE previous")
    db.execute("ATTACH DATABASE ? AS previous", (str(catalog) if catalog else ":memory:",))
    if catalog is None:
        db.execute("CREATE TABLE previous.items (id INTEGER PRIMARY KEY, path UNIQUE)")
