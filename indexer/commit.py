"""A build's change of the store, committed: a new index created, or one change of an index in place.

A change is what one build found: the images it embedded (new ones and changed ones, which keep
their ids), and the rows it replaces (of changed and removed images). It becomes one new segment
holding only the embedded vectors, a new deletion record for each segment whose rows it replaces,
and one catalog transaction naming them: the bytes written grow with the change, not the collection.
An item still on a replaced row once the new items are in leaves the index.
A new index commits by its manifest, written last: until then the directory is no index, and
whatever a killed creation left is swept away by the next build (indexer.leftovers).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from indexer import space
from indexer.merge_policy import segment_type
from indexer.plan import Layout
from indexer.segment_writer import write_deletions, write_segment
from retrieval.errors import TusouError
from retrieval.store.catalog import Catalog, SegmentRow, bump_generation, drop_rows, item_values, put_items, put_segment, put_setting
from retrieval.store.faults import kill_point
from retrieval.store.manifest import Manifest, rebuild_hint, write_manifest
from retrieval.store.model_ref import ModelRef
from retrieval.ocr.engine import OcrResult
from retrieval.store.records import CatalogItem
from retrieval.store.text_lines import drop_lines, put_lines
from retrieval.store.store import CATALOG


class Items(Protocol):
    """Items a commit reads a few times over (a list, or indexer.staged_items streaming them from SQLite)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[CatalogItem]: ...


class Texts(Protocol):
    """Texts read: (path as the catalog stores it, size, mtime_ns, change_key, OcrResult's JSON)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[str | bytes, int, int, str | None, str]]: ...


@dataclass
class Change:
    items: Items
    """Items whose vectors this change adds (new and changed images), in the new segment's row order."""
    fill: Callable[[np.ndarray], None]
    """Writes those vectors into the new segment's float16 rows (indexer.segment_writer.write_segment)."""
    next_id: int
    """The first id no item has had: ids are never reused."""
    layout: Layout
    """What the new segment is built as."""
    recorded: Layout | None = None
    """The layout setting the commit leaves (None: `layout`). A build asked for a new layout records the
    one the segments are built as until the merge of everything into the new one records that: a build
    interrupted between the two (killed, out of space) still asks for the merge when run again."""
    replaced: dict[int, Sequence[int]] = field(default_factory=dict)
    """Segment → rows of the vectors that changed and removed items leave behind: a removed item is one
    still on such a row once `items` are in."""
    texts: Texts = ()
    """The text read in images (indexer.staging.StagedTexts): of `items`, and of unchanged items read alone."""
    ocr: bool = False
    """Whether the index reads text (its `ocr` setting, which the commit leaves)."""

    @property
    def empty(self) -> bool:
        return not (len(self.items) or self.replaced or len(self.texts))


def create_index(directory: Path, model: ModelRef, dim: int, change: Change, progress: bool) -> None:
    """A new index: segment 1 of the layout's type, the catalog, then the manifest (its commit)."""
    layout = change.layout
    space.expect(_change_bytes(change, dim, layout.requested))
    segment = write_segment(directory, 1, _ids(change), dim, change.fill, layout.requested, layout.max_memory, progress)
    catalog = Catalog(directory / CATALOG, create=True)
    try:
        with catalog.transaction() as db:
            _put(db, change, [segment], segment.id)
            put_settings(db, {"next_segment": 2})
            bump_generation(db)
        created = str(catalog.setting("updated"))
    finally:
        catalog.close()
    write_manifest(directory, Manifest(model, dim, created=created))


def commit_change(directory: Path, catalog: Catalog, dim: int, change: Change, progress: bool) -> None:
    """One change of an existing index, committed as its next generation in one transaction;
    afterwards, the deletion records it superseded are deleted."""
    generation = int(catalog.setting("generation", 0)) + 1  # what bump_generation will commit; names the deletion records
    segments = {row.id: row for row in catalog.segments()}
    unnamed = sorted(set(change.replaced) - set(segments))
    if unnamed:
        raise TusouError(f"{catalog.path} is damaged (items in segment {unnamed[0]}, which it does not name): {rebuild_hint(directory)}")
    written: list[SegmentRow] = []
    number = int(catalog.setting("next_segment", max(segments, default=0) + 1))
    kind = segment_type(len(change.items), change.layout.requested) if segments else change.layout.requested
    deletions = sum(8 * (segments[s].deleted + len(rows)) + space.BLOCK for s, rows in change.replaced.items())
    space.expect(_change_bytes(change, dim, kind) + deletions)
    if change.items:
        written.append(write_segment(directory, number, _ids(change), dim, change.fill, kind, change.layout.max_memory, progress))
    written += [write_deletions(directory, segments[s], rows, generation) for s, rows in sorted(change.replaced.items())]
    with catalog.transaction() as db:
        _put(db, change, written, number)
        drop_rows(db, change.replaced)
        put_settings(db, {"next_segment": number + 1 if change.items else number})
        bump_generation(db)
    for old in (segments[s].files.get("deleted") for s in sorted(change.replaced)):
        if old is not None:
            (directory / old).unlink(missing_ok=True)
            kill_point("cleanup")


def _change_bytes(change: Change, dim: int, kind: str) -> int:
    """The new segment's files and the catalog rows of its items."""
    paths = space.path_bytes(item.path for item in change.items)
    return space.segment_bytes(len(change.items), dim, kind) + space.sqlite_bytes(len(change.items), paths)


def _ids(change: Change) -> np.ndarray:
    return np.fromiter((item.id for item in change.items), dtype=np.int64, count=len(change.items))


def _put(db: sqlite3.Connection, change: Change, segments: list[SegmentRow], segment: int) -> None:
    """The rows every commit writes: the segments it wrote, the items of the new segment (a changed
    image keeps its id and now points at its new row), and the settings that say what it was."""
    for row in segments:
        put_segment(db, row)
    put_items(db, (item_values(item, segment, row) for row, item in enumerate(change.items)))
    if change.replaced:  # a changed image (it left a row behind) keeps its id, but its old text is not its text now
        drop_lines(db, (item.id for item in change.items))
    put_texts(db, change.texts)
    put_settings(db, {"next_id": change.next_id, "layout": asdict(change.recorded or change.layout), "ocr": change.ocr})


def put_texts(db: sqlite3.Connection, texts: Texts) -> None:
    """Each text read, as the lines of the item at its path with its stamp (one changed or gone since
    it was read has none)."""
    for path, size, mtime_ns, change_key, text in texts:
        found = db.execute("SELECT id FROM items WHERE path = ? AND size = ? AND mtime_ns = ? AND change_key IS ?", (path, size, mtime_ns, change_key))
        for (item,) in found.fetchall():
            read = OcrResult.from_json(text)
            put_lines(db, item, read.lines, read.reason)


def put_settings(db: sqlite3.Connection, values: dict[str, object]) -> None:
    for key, value in values.items():
        put_setting(db, key, value)
