"""Embeddings of a build in progress, staged so a killed build resumes.

    staging/model.json         the model that embedded them: a staging of another model's is not this build's
    staging/chunk-NNNNNN.npz   one flush's vectors (`vectors`, float16), written once, atomically
    staging/records.sqlite     one row per staged image: its record, and the chunk and row of its vector

A flush writes its chunk first, then its records in one SQLite transaction, the commit point:
a build killed between the two left a chunk no row names, and opening the staging deletes it.
A staged record counts for an image only while it still has the stamp (size, mtime, change
key) it had when embedded. Neither the records nor the vectors are held in memory: `get` is a
lookup by path, `records` streams, and the commit copies vectors one chunk at a time, so a
hundred million staged images cost the driver a checkpoint's worth, not a gigabyte per million.

A staging left by a tusou that kept the records inside the chunks (no records.sqlite) is
discarded, as is one whose records have other fields than ImageRecord now: its images are
embedded again.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import fields
from itertools import groupby
from operator import attrgetter, itemgetter
from pathlib import Path

import numpy as np

from indexer.sources import SourceFile
from retrieval.store.atomic import atomic_write, atomic_write_text, fsync_dir
from retrieval.store.catalog import transaction
from retrieval.store.faults import kill_point
from retrieval.store.model_ref import ModelRef
from retrieval.store.records import ImageRecord

RECORDS = "records.sqlite"
FIELDS = tuple(field.name for field in fields(ImageRecord))
COLUMNS = (*FIELDS, "chunk", "row")
SCHEMA = f"""
BEGIN;
CREATE TABLE records (path PRIMARY KEY, {", ".join(COLUMNS[1:])});
CREATE INDEX records_by_place ON records (chunk, row);
COMMIT;
"""
"""Columns without types: SQLite keeps each value as the record had it (text, integer, real or none),
but the path: UTF-8 bytes (`_key`)."""
CHUNK = re.compile(r"chunk-(\d+)\.npz")
SELECT = f"SELECT {', '.join(FIELDS)} FROM records"
INSERT = f"INSERT OR REPLACE INTO records ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
"""A path staged again (a retried Ray task, an image changed while a build was killed) keeps its latest row."""


class Staging:
    def __init__(self, directory: Path, model: ModelRef):
        self.directory = directory
        self.model = model.to_dict()
        """The model entry of the index being built: a staging of another model's is not this build's."""
        self.pending: list[tuple[ImageRecord, np.ndarray]] = []
        self.added = 0
        """Vectors added by this build (the rest were staged by an interrupted one)."""
        self._db = self._resume()
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
        named = self._db.execute("SELECT max(chunk) FROM records").fetchone()[0] if self._db else None
        return max(on_disk + [named or 0])

    def _chunk(self, number: int) -> Path:
        return self.directory / f"chunk-{number:06d}.npz"

    def get(self, source: SourceFile) -> ImageRecord | None:
        """The staged record of `source`, if it was embedded from the file as it is now."""
        if self._db is None:
            return None
        found = self._db.execute(f"{SELECT} WHERE path = ?", (_key(source.path),)).fetchone()
        record = _record(found) if found else None
        return record if record and record.stamp == source.stamp else None

    def add(self, item: ImageRecord, vector: np.ndarray) -> None:
        """Keep a vector until the next flush; it counts as staged from then on."""
        self.pending.append((item, vector))
        self.added += 1

    def records(self) -> Iterator[ImageRecord]:
        """Every staged record (the latest of a path staged twice), streamed from the database."""
        if self._db is not None:
            for found in self._db.execute(SELECT):
                yield _record(found)

    def flush(self) -> None:
        """Write what was added since the last flush as one more chunk, then commit its records."""
        if not self.pending:
            return
        db = self._db or self._create()
        number, self._next_chunk = self._next_chunk, self._next_chunk + 1
        vectors = np.stack([vector for _, vector in self.pending]).astype(np.float16)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, vectors=vectors)

        atomic_write(self._chunk(number), write)
        kill_point("chunk")  # the chunk is in place, no record names it yet
        try:
            with transaction(db):
                db.executemany(INSERT, ((*_values(item), number, row) for row, (item, _) in enumerate(self.pending)))
        except BaseException:  # a full disk, say: the chunk no record names goes now, not at the next build
            self._chunk(number).unlink(missing_ok=True)
            raise
        self.pending = []
        kill_point("staged")

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
        self._db = db
        return db

    def copy_vectors(self, rows: dict[str, int], out: np.ndarray) -> None:
        """out[rows[path]] = the staged vector of path, for every path in `rows`, reading each chunk once."""
        copied = 0
        places = self._db.execute("SELECT chunk, row, path FROM records ORDER BY chunk, row") if self._db else ()
        for number, staged in groupby(places, key=itemgetter(0)):
            wanted = [(row, rows[path]) for _, row, key in staged if (path := _path(key)) in rows]
            if wanted:
                sources, destinations = (list(side) for side in zip(*wanted))
                with np.load(self._chunk(number)) as data:
                    out[destinations] = data["vectors"][sources]
                copied += len(wanted)
        if copied != len(rows):
            raise KeyError(f"{len(rows) - copied} of the images to copy are not staged")

    def close(self) -> None:
        """Close the records (what was flushed stays staged for the next build)."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def clear(self) -> None:
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _key(path: str) -> bytes:
    """A path as the table keys it: UTF-8 with its surrogates kept (a file name that is not UTF-8 has
    them, and SQLite text cannot), so every path Python can name comes back exactly."""
    return path.encode("utf-8", "surrogatepass")


def _path(key: bytes) -> str:
    return key.decode("utf-8", "surrogatepass")


_rest = attrgetter(*FIELDS[1:])


def _values(item: ImageRecord) -> tuple:
    return (_key(item.path), *_rest(item))


def _record(found: tuple) -> ImageRecord:
    key, *rest = found
    return ImageRecord(_path(key), **dict(zip(FIELDS[1:], rest)))


def _open_records(path: Path) -> sqlite3.Connection | None:
    """The staged records at `path`, if they are a records table of today's columns."""
    db = None
    try:
        db = _connect(path)
        if tuple(column for _, column, *_ in db.execute("PRAGMA table_info(records)")) == COLUMNS:
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
