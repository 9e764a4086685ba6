"""The catalog of an index: one SQLite row per item, its metadata, and the segments' table.

SQLite (the standard library's, in WAL mode) is what makes a commit atomic: a build writes
its segment files first, then one transaction names them and changes the items, so a reader
sees the old set of segments or the new one, and a build killed before the transaction left
only files nothing names. Opening reads no item rows; lookups and filters are queries on
indexed columns. Each filter column's index also holds (segment, row), so the rows a filter
matches are read from the index alone: 0.7 µs a row, not 5 (measured at 1M items).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from retrieval.errors import TusouError
from retrieval.search.filters import Filters, distance_km
from retrieval.search.text_match import within_one_edit
from retrieval.store.full_disk import DiskFull, is_full_disk
from retrieval.store.manifest import IndexEntry, check_index_entry, plain_name, rebuild_hint
from retrieval.store.records import CatalogItem, folder_of, mtime_taken
from retrieval.store.text_lines import create_text_tables, unread_items

TABLES = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
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
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    count INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    files TEXT NOT NULL,
    index_entry TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value NOT NULL);
"""
INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS items_by_place ON items (segment, row);
CREATE INDEX IF NOT EXISTS items_by_path ON items (path, segment, row);
CREATE INDEX IF NOT EXISTS items_by_taken ON items (taken, segment, row);
CREATE INDEX IF NOT EXISTS items_by_format ON items (format, segment, row);
CREATE INDEX IF NOT EXISTS items_by_camera ON items (camera COLLATE NOCASE, segment, row);
CREATE INDEX IF NOT EXISTS items_by_location ON items (latitude, longitude, segment, row);
"""
"""The filter columns' indexes (each holding (segment, row) too). A format-1 index's catalog in
memory goes without: built at every open, it would cost more than the scans it saves."""
UNIQUE_PATHS = """
CREATE TRIGGER IF NOT EXISTS items_path_unique BEFORE INSERT ON items
WHEN EXISTS (SELECT 1 FROM items WHERE path = NEW.path AND id != NEW.id)
BEGIN SELECT RAISE(ABORT, 'two items with one path'); END;
"""
"""A path is unique by this trigger, which looks it up in items_by_path, not by a UNIQUE column: that
would be a second index on path, and every image added in a new place in path order costs each
path index a leaf page (4 KB, written twice through the WAL): 1,000 images added over 1,000
folders of a 1M catalog wrote 16 MB of catalog with both, 8 MB with one (catalogs made before
this keep their UNIQUE index too)."""
SEGMENTS_DIR = "segments"
"""Where every segment file lives, inside the index directory."""
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
    """vectors, ids, faiss, and (once a row is deleted) deleted: names relative to the index directory."""
    index_entry: IndexEntry

    @property
    def live(self) -> int:
        return self.count - self.deleted

    def values(self) -> tuple:
        return (self.id, self.count, self.deleted, json.dumps(self.files), json.dumps(self.index_entry.to_dict()))


def item_values(item: CatalogItem, segment: int, row: int, format_guess: str | None = None) -> tuple:
    """An items-table row (in ITEM_COLUMNS order): the record, where its vector is, `taken` (EXIF, else
    the file's mtime) and its folder; `format_guess` stands in for a format the record does not know."""
    return (
        item.id, name_value(item.path), item.size, item.mtime_ns, item.sha256, item.width, item.height, item.change_key,
        segment, row, item.taken or mtime_taken(item.mtime_ns), "exif" if item.taken else "mtime", item.taken_offset,
        item.camera, item.latitude, item.longitude, item.orientation, item.format or format_guess, name_value(folder_of(item.path)),
    )


NAMES = ("path", "folder")
"""File names: a name that is not UTF-8 reaches Python with lone surrogates (os.fsdecode), which
SQLite text cannot hold; it is stored as its bytes instead (a BLOB), and read back the same."""


def name_value(name: str) -> str | bytes:
    """A file name as the catalog (and a build's staging) stores it: text, or its bytes."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(name)
    return name


def name_of(value: str | bytes) -> str:
    """A stored file name (name_value) as Python has it."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def paths_under(prefix: str) -> tuple[str, list[str | bytes]]:
    """A condition on `path` (and its parameters) for the names that start with `prefix`, which ends in
    `#` (a tar shard's members): ranges an index on `path` answers, one of text and one of bytes, since a
    member's name that is not UTF-8 is stored as bytes (name_value) and SQLite orders those apart."""
    stored: list[str | bytes] = [os.fsencode(prefix)]
    if isinstance(name_value(prefix), str):
        stored.insert(0, prefix)
    after = lambda value: value[:-1] + (chr(ord(value[-1]) + 1) if isinstance(value, str) else bytes([value[-1] + 1]))  # noqa: E731
    return f"({' OR '.join(['(path >= ? AND path < ?)'] * len(stored))})", [bound for value in stored for bound in (value, after(value))]


def item_row(values: Iterable) -> dict:
    """An items-table row by column name, its file names as Python has them."""
    row = dict(zip(ITEM_COLUMNS, values))
    for name in NAMES:
        row[name] = name_of(row[name])
    return row


def stored_item(row: dict) -> CatalogItem:
    """The CatalogItem an items-table row holds (`taken` only when it is the EXIF time)."""
    fields = {name: row[name] for name in ITEM_COLUMNS if name not in ("segment", "row", "taken_from", "folder")}
    return CatalogItem(**{**fields, "taken": row["taken"] if row["taken_from"] == "exif" else None})


class Catalog:
    """`catalog.sqlite`, one connection per thread (a searcher serves several threads at once, and
    one connection cannot hold two threads' transactions). `Catalog.in_memory()` is a private one."""

    def __init__(self, path: Path, *, create: bool = False, uri: str | None = None):
        self.path = path
        self._uri = uri
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        if not create and not path.is_file():
            raise TusouError(f"{path.parent} is damaged: its catalog {path.name} is missing: {rebuild_hint(path.parent)}")
        if not create and uri is None and path.stat().st_size == 0:  # SQLite would take it for a new database, and write one
            raise TusouError(f"{path} is damaged (empty): {rebuild_hint(path.parent)}")
        beside = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
        new = [side for side in beside if not side.exists()]
        try:
            with self.checked():
                if create:
                    self.db.executescript(TABLES + ("" if uri else INDEXES + UNIQUE_PATHS))
                    if uri is None:  # a format-1 index's catalog in memory has no text read
                        create_text_tables(self.db)
                self.db.execute("SELECT count(*) FROM segments").fetchone()
        except TusouError:
            self.close()  # SQLite removes its -wal and -shm on close only after a checkpoint, which a damaged file fails
            for side in new:
                side.unlink(missing_ok=True)
            raise

    @contextmanager
    def checked(self) -> Iterator[None]:
        """Reads whose damage (a page SQLite finds malformed, a file that is no database) is one line naming the catalog."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if is_full_disk(exc):  # a healthy catalog on a full disk: not damage
                raise DiskFull(self.path.parent) from exc
            raise TusouError(f"{self.path} is damaged ({exc}): {rebuild_hint(self.path.parent)}") from None

    @classmethod
    def in_memory(cls) -> Catalog:
        """A catalog that lives as long as this object (shared by its threads through SQLite's shared cache)."""
        catalog = cls(Path(":memory:"), create=True, uri=f"file:tusou-{uuid.uuid4().hex}?mode=memory&cache=shared")
        return catalog

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's connection."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self._uri or self.path, uri=self._uri is not None, check_same_thread=False, isolation_level=None, timeout=30)
            if self._uri is None:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")  # a commit survives power loss, as every other file does
            db.execute("PRAGMA temp_store=MEMORY")  # statement journals (one per INSERT OR REPLACE) off the disk: 16 MB for 2,000 items
            db.create_function("distance_km", 4, distance_km, deterministic=True)
            db.create_function("within_one_edit", 2, within_one_edit, deterministic=True)  # text search's one-edit check
            self._local.db = db
            with self._guard:
                self._connections.append(db)
        return db

    def close(self) -> None:
        with self._guard:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One atomic change: everything inside is committed together or not at all."""
        return transaction(self.db)

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """Reads that must agree with each other (the segments and the rows they hold)."""
        self.db.execute("BEGIN")
        try:
            yield self.db
        finally:
            self.db.execute("COMMIT")

    def count(self) -> int:
        with self.checked():
            return self.db.execute("SELECT count(*) FROM items").fetchone()[0]

    def segments(self, db: sqlite3.Connection | None = None) -> list[SegmentRow]:
        with self.checked():
            rows = (db or self.db).execute("SELECT id, count, deleted, files, index_entry FROM segments ORDER BY id").fetchall()
        return [self._segment_row(*row) for row in rows]

    def _segment_row(self, id: int, count: int, deleted: int, files: str, entry: str) -> SegmentRow:
        """A segments-table row, checked as a manifest's entry is: files inside segments/, an index
        entry the search code understands; damage is one line naming the catalog."""
        fix = rebuild_hint(self.path.parent)
        try:
            files, entry = json.loads(files), json.loads(entry)
        except (TypeError, json.JSONDecodeError):
            raise TusouError(f"{self.path} is damaged (segment {id}: its files or index entry are not JSON): {fix}") from None
        if not isinstance(files, dict) or not {"vectors", "ids", "faiss"} <= set(files):
            raise TusouError(f"{self.path} is damaged (segment {id} does not name its vectors, ids and FAISS files): {fix}")
        for role, name in files.items():
            folder, _, base = name.partition("/") if isinstance(name, str) else ("", "", None)
            if folder != SEGMENTS_DIR or not plain_name(base):
                raise TusouError(
                    f"{self.path} is damaged: segment {id}'s {role} file {name!r} is not a file inside {self.path.parent / SEGMENTS_DIR} "
                    f"(refused, not opened): {fix}"
                )
        check_index_entry(self.path, entry, fix)
        return SegmentRow(id, count, deleted, files, IndexEntry(**entry))

    def setting(self, key: str, default: object = None, db: sqlite3.Connection | None = None) -> object:
        with self.checked():
            found = (db or self.db).execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return json.loads(found[0]) if found else default

    def all_items(self) -> Iterator[tuple[CatalogItem, int, int]]:
        """Every item with its (segment, row), in path order: what a build compares the collection with."""
        with self.checked():
            for values in self.db.execute(f"SELECT {', '.join(ITEM_COLUMNS)} FROM items ORDER BY path"):
                row = item_row(values)
                yield stored_item(row), row["segment"], row["row"]

    def unread(self) -> Iterator[int]:
        """The items whose text was not read yet (retrieval.store.text_lines)."""
        with self.checked():
            yield from unread_items(self.db)

    def keys_under(self, prefix: str) -> set[str | None]:
        """The change keys of the items whose path starts with `prefix` (`SHARD#`: a tar shard's members)."""
        where, params = paths_under(prefix)
        with self.checked():
            return {key for (key,) in self.db.execute(f"SELECT DISTINCT change_key FROM items WHERE {where}", params)}

    def items(self, ids: Iterable[int]) -> dict[int, dict]:
        """The rows of `ids` (those still in the catalog), by id."""
        wanted = list(ids)
        found: dict[int, dict] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            query = f"SELECT {', '.join(ITEM_COLUMNS)} FROM items WHERE id IN ({', '.join('?' * len(chunk))})"
            with self.checked():
                found |= {row[0]: item_row(row) for row in self.db.execute(query, chunk)}
        return found

    def count_matching(self, filters: Filters, limit: int) -> int:
        """How many items pass `filters`, counted up to `limit` (so a broad filter costs no full count)."""
        where, params = filters.where()
        return self.db.execute(f"SELECT count(*) FROM (SELECT 1 FROM items WHERE {where} LIMIT ?)", [*params, limit]).fetchone()[0]

    def share(self, filters: Filters, sample: int) -> float:
        """The share of items passing `filters`, estimated on up to `sample` ids spread over the id range."""
        where, params = filters.where()
        top = self.db.execute("SELECT max(id) FROM items").fetchone()[0]
        if top is None:
            return 0.0
        total, passed = self.db.execute(  # ids scattered by a multiplicative hash: no period of the data aligns with them
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?), "
            "sample(id) AS (SELECT DISTINCT (i * 2654435761) % ? FROM n) "
            f"SELECT count(*), coalesce(sum(CASE WHEN {where} THEN 1 ELSE 0 END), 0) FROM sample JOIN items USING (id)",
            [min(sample, top + 1), top + 1, *params],
        ).fetchone()
        return passed / total if total else 0.0

    def passing(self, filters: Filters, segment: int, rows: np.ndarray) -> np.ndarray:
        """Which of a segment's `rows` hold items that pass `filters` (a post-filter of ANN candidates)."""
        where, params = filters.where()
        found: list[int] = []
        for start in range(0, len(rows), 500):
            chunk = [int(r) for r in rows[start : start + 500]]
            query = f"SELECT row FROM items WHERE segment = ? AND row IN ({', '.join('?' * len(chunk))}) AND {where}"
            found += [r for (r,) in self.db.execute(query, [segment, *chunk, *params])]
        return np.isin(rows, np.array(found, dtype=np.int64))

    def matching_rows(self, filters: Filters) -> dict[int, np.ndarray]:
        """Segment → sorted rows of the items that pass `filters` (one integer a row: segment << 32 | row)."""
        where, params = filters.where()
        (listed,) = self.db.execute(f"SELECT group_concat((segment << 32) | row) FROM items WHERE {where}", params).fetchone()
        packed = np.fromstring(listed or "", dtype=np.int64, sep=",")  # one string, not a Python object a row: half the time
        packed.sort()
        segments, starts = np.unique(packed >> 32, return_index=True)
        rows = packed & 0xFFFFFFFF
        return {int(s): part for s, part in zip(segments, np.split(rows, starts[1:]))}


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One atomic change on `db`, its COMMIT included: a failure anywhere rolls it back, unless SQLite
    did already (it does on SQLITE_FULL, and a second ROLLBACK would hide the real error)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def put_items(db: sqlite3.Connection, rows: Iterable[tuple]) -> None:
    """Insert items (`item_values` rows), or replace those of the same id (a changed image keeps its id)."""
    db.executemany(f"INSERT OR REPLACE INTO items VALUES ({', '.join('?' * len(ITEM_COLUMNS))})", rows)


def drop_items(db: sqlite3.Connection, ids: Iterable[int]) -> None:
    db.executemany("DELETE FROM items WHERE id = ?", ((int(i),) for i in ids))


def drop_rows(db: sqlite3.Connection, rows: dict[int, Iterable[int]]) -> None:
    """Delete the items still on these rows (segment → rows)."""
    db.executemany("DELETE FROM items WHERE segment = ? AND row = ?", ((segment, int(row)) for segment, found in rows.items() for row in found))


def put_segment(db: sqlite3.Connection, segment: SegmentRow) -> None:
    db.execute("INSERT OR REPLACE INTO segments VALUES (?, ?, ?, ?, ?)", segment.values())


def drop_segments(db: sqlite3.Connection, ids: Iterable[int]) -> None:
    db.executemany("DELETE FROM segments WHERE id = ?", ((int(i),) for i in ids))


def put_setting(db: sqlite3.Connection, key: str, value: object) -> None:
    db.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, json.dumps(value)))


def bump_generation(db: sqlite3.Connection) -> int:
    """The last step of every transaction that changes the index: generation + 1 (what tells a
    reader's Store that its view is old) and `updated`; returns the new generation."""
    found = db.execute("SELECT value FROM settings WHERE key = 'generation'").fetchone()
    generation = (json.loads(found[0]) if found else 0) + 1
    put_setting(db, "generation", generation)
    put_setting(db, "updated", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return generation
