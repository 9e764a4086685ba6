"""Embeddings of a build in progress, staged so a killed build resumes.

    staging/model.json         the model that embedded them: a staging of another model's is not this build's
    staging/chunk-NNNNNN.npz   one flush's vectors (`vectors`, float16), written once, atomically
    staging/records.sqlite     one row per staged image: its record, and the chunk and row of its vector;
                               and (`texts`) the text read in each image read, with the stamp it had

A flush writes its chunk first, then its records in one SQLite transaction, the commit point:
a build killed between the two left a chunk no row names, and opening the staging deletes it.
A staged record counts for an image only while it still has the stamp (size, mtime, change
key) it had when embedded: the commit takes the records of the files it commits with the stamps
they have then (indexer.staged_items). Neither the records nor the vectors are held in memory:
`get` is a lookup by path, `records` streams, and the commit reads them and copies the vectors a
chunk at a time, so a hundred million staged images cost the driver a checkpoint's worth, not a
gigabyte per million.

A staging left by a tusou that kept the records inside the chunks (no records.sqlite) is
discarded, as is one whose records have other fields than ImageRecord now or that keyed them
otherwise, or that had no texts (its `user_version`): its images are embedded again.

Text read in an image (`tusou index --ocr`) is staged beside its record, in the same transaction;
an image the index holds unchanged, read for its text alone, has its text staged and no record.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import fields
from operator import attrgetter
from pathlib import Path

import numpy as np

from indexer.sources import SourceFile
from retrieval.locations import MEMBER_SEPARATOR
from retrieval.ocr.engine import OcrResult
from retrieval.store.atomic import atomic_write, atomic_write_text, fsync_dir
from retrieval.store.catalog import name_of, name_value, paths_under, transaction
from retrieval.store.faults import kill_point
from retrieval.store.model_ref import ModelRef
from retrieval.store.records import ImageRecord

RECORDS = "records.sqlite"
FIELDS = tuple(field.name for field in fields(ImageRecord))
COLUMNS = (*FIELDS, "chunk", "row")
VERSION = 2
"""Of the records' keys (`user_version`): 2, with the texts table; 1, paths stored as the catalog stores
them (name_value), so the commit joins them with the index's items; 0, before, kept every path as UTF-8 bytes."""
SCHEMA = f"""
BEGIN;
CREATE TABLE records (path PRIMARY KEY, {", ".join(COLUMNS[1:])});
CREATE INDEX records_by_place ON records (chunk, row);
CREATE TABLE texts (path PRIMARY KEY, size, mtime_ns, change_key, text);
PRAGMA user_version = {VERSION};
COMMIT;
"""
"""Columns without types: SQLite keeps each value as the record had it (text, integer, real or none)."""
CHUNK = re.compile(r"chunk-(\d+)\.npz")
SELECT = f"SELECT {', '.join(FIELDS)} FROM records"
INSERT = f"INSERT OR REPLACE INTO records ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
"""A path staged again (a retried Ray task, an image changed while a build was killed) keeps its latest row."""
INSERT_TEXT = "INSERT OR REPLACE INTO texts VALUES (?, ?, ?, ?, ?)"
TEXT_STAMPED = "path = ? AND size = ? AND mtime_ns = ? AND change_key IS ?"


class StagedTexts:
    """The staged texts (path as the catalog stores it, stamp, OcrResult's JSON), read again at each
    pass, never held (indexer.commit.Items)."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __len__(self) -> int:
        return self._db.execute("SELECT count(*) FROM texts").fetchone()[0]

    def __iter__(self) -> Iterator[tuple[str | bytes, int, int, str | None, str]]:
        yield from self._db.execute("SELECT path, size, mtime_ns, change_key, text FROM texts")


class Staging:
    def __init__(self, directory: Path, model: ModelRef):
        self.directory = directory
        self.model = model.to_dict()
        """The model entry of the index being built: a staging of another model's is not this build's."""
        self.unflushed: list[tuple[ImageRecord, np.ndarray]] = []
        self.unflushed_texts: list[tuple] = []
        self.added = 0
        """Vectors added by this build (the rest were staged by an interrupted one)."""
        resumed = self._resume()
        self._on_disk = resumed is not None
        self.db = resumed or _no_records()
        """The records: on disk once anything is staged, until then an empty database in memory."""
        self._next_chunk = self._last_chunk() + 1

    def _resume(self) -> sqlite3.Connection | None:
        """The records of a staging this build can go on with, its unnamed chunks deleted; else
        None, and whatever else is in the directory removed."""
        meta, path = self.directory / "model.json", self.directory / RECORDS
        if meta.is_file() and path.is_file() and json.loads(meta.read_text(encoding="utf-8")) == self.model:
            db = _open_records(path)
            if db is not None:
                self._sweep(db)
                return db
        if self.directory.exists():
            shutil.rmtree(self.directory)
        return None

    def _sweep(self, db: sqlite3.Connection) -> None:
        """Delete the chunks no record names: written by a flush killed before its commit, or every
        row of them staged again since."""
        for chunk in self.directory.glob("chunk-*.npz"):
            number = CHUNK.fullmatch(chunk.name)
            if number and db.execute("SELECT 1 FROM records WHERE chunk = ? LIMIT 1", (int(number[1]),)).fetchone() is None:
                chunk.unlink()

    def _last_chunk(self) -> int:
        """The highest chunk number on disk or named by a record (0: none), so a new chunk's name is new."""
        on_disk = [int(found[1]) for chunk in self.directory.glob("chunk-*.npz") if (found := CHUNK.fullmatch(chunk.name))]
        named = self.db.execute("SELECT max(chunk) FROM records").fetchone()[0]
        return max(on_disk + [named or 0])

    def chunk(self, number: int) -> Path:
        return self.directory / f"chunk-{number:06d}.npz"

    def get(self, source: SourceFile) -> ImageRecord | None:
        """The staged record of `source`, if it was embedded from the file as it is now."""
        found = self.db.execute(f"{SELECT} WHERE path = ?", (name_value(source.path),)).fetchone()
        record = _record(found) if found else None
        return record if record and record.stamp == source.stamp else None

    def add(self, item: ImageRecord, vector: np.ndarray) -> None:
        """Keep a vector until the next flush; it counts as staged from then on."""
        self.unflushed.append((item, vector))
        self.added += 1

    def add_text(self, path: str, stamp: tuple[int, int, str | None], text: OcrResult) -> None:
        """Keep the text read in the image at `path` as `stamp` says it was, until the next flush."""
        self.unflushed_texts.append((name_value(path), *stamp, text.to_json()))

    def has_text(self, source: SourceFile) -> bool:
        """Whether the text of `source` as it is now was staged."""
        return self.db.execute(f"SELECT 1 FROM texts WHERE {TEXT_STAMPED}", (name_value(source.path), *source.stamp)).fetchone() is not None

    @property
    def texts(self) -> StagedTexts:
        return StagedTexts(self.db)

    def records(self) -> Iterator[ImageRecord]:
        """Every staged record (the latest of a path staged twice), streamed from the database."""
        for found in self.db.execute(SELECT):
            yield _record(found)

    def members(self, shard: SourceFile) -> list[str]:
        """The names in `shard` of the members staged from it as it is now (by a build it interrupted)."""
        where, params = paths_under(shard.path + MEMBER_SEPARATOR)
        found = self.db.execute(f"SELECT path FROM records WHERE {where} AND change_key IS ?", [*params, shard.change_key])
        return [name_of(path)[len(shard.path) + len(MEMBER_SEPARATOR) :] for (path,) in found]

    def flush(self) -> None:
        """Write what was added since the last flush as one more chunk, then commit its records and texts."""
        if not self.unflushed and not self.unflushed_texts:
            return
        db = self.db if self._on_disk else self._create()
        number = self._write_chunk() if self.unflushed else None
        try:
            with transaction(db):
                db.executemany(INSERT, ((*_values(item), number, row) for row, (item, _) in enumerate(self.unflushed)))
                db.executemany(INSERT_TEXT, self.unflushed_texts)
        except BaseException:  # a full disk, say: the chunk no record names goes now, not at the next build
            if number is not None:
                self.chunk(number).unlink(missing_ok=True)
            raise
        self.unflushed, self.unflushed_texts = [], []
        kill_point("staged")

    def _write_chunk(self) -> int:
        """The unflushed vectors as the next chunk; its number."""
        number, self._next_chunk = self._next_chunk, self._next_chunk + 1
        vectors = np.stack([vector for _, vector in self.unflushed]).astype(np.float16)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, vectors=vectors)

        atomic_write(self.chunk(number), write)
        kill_point("chunk")  # the chunk is in place, no record names it yet
        return number

    def _create(self) -> sqlite3.Connection:
        """A new staging: its model first (a records file only counts beside it), then the empty records.
        A creation that fails (a full disk) removes what it made: there was no staging before it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        db = None
        try:
            atomic_write_text(self.directory / "model.json", json.dumps(self.model))
            db = _connect(self.directory / RECORDS)
            db.executescript(SCHEMA)
            fsync_dir(self.directory)
        except BaseException:
            if db is not None:
                db.close()
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        self.db.close()
        self.db, self._on_disk = db, True
        return db

    def close(self) -> None:
        """Close the records (what was flushed stays staged for the next build)."""
        self.db.close()

    def clear(self) -> None:
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)


_rest = attrgetter(*FIELDS[1:])


def _values(item: ImageRecord) -> tuple:
    return (name_value(item.path), *_rest(item))


def _record(found: tuple) -> ImageRecord:
    key, *rest = found
    return ImageRecord(name_of(key), **dict(zip(FIELDS[1:], rest)))


def _no_records() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA)
    return db


def _open_records(path: Path) -> sqlite3.Connection | None:
    """The staged records at `path`, if they are a records table of today's columns."""
    db = None
    try:
        db = _connect(path)
        columns = tuple(column for _, column, *_ in db.execute("PRAGMA table_info(records)"))
        if columns == COLUMNS and db.execute("PRAGMA user_version").fetchone()[0] == VERSION:
            return db
    except sqlite3.DatabaseError:
        pass  # not a database any more: what it staged is embedded again
    if db is not None:
        db.close()
    return None


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # a committed flush survives power loss, as its chunk does
    return db
