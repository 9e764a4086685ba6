"""Merging segments: the policy's merges after a build, or every segment into one (a reindex).

A merge reads only the merged segments' vectors, ids and deletion records, never their FAISS files
(so it also repairs a damaged one). It copies their live rows block by block into a new segment,
which write_segment trains and tunes, then ONE catalog transaction names the new segment, drops the
merged ones and points every moved item at its new row. After the commit their files go: a reader
that mapped them keeps its mappings (POSIX), one that had not opened them yet finds a newer
generation and reads the rows again (Store._open_view). Callers hold the build lock.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from indexer import space
from indexer.faiss_build import plan_index
from indexer.merge_policy import plan_merges, segment_type
from indexer.plan import Layout
from indexer.segment_writer import remove_unnamed, write_segment
from retrieval.errors import TusouError
from retrieval.store.catalog import Catalog, SegmentRow, bump_generation, drop_segments, put_segment, put_setting
from retrieval.store.faults import kill_point
from retrieval.store.manifest import read_manifest, rebuild_hint
from retrieval.store.segment import missing_file, segment_rows

COPY_BLOCK = 65_536
"""Rows copied at a time: 96 MB of float16 at d=768, whatever the size of the merge."""
DEFAULT_LAYOUT = Layout("auto", None)


@dataclass(frozen=True)
class _Source:
    """A segment to merge: its vectors (mapped), its live rows (sorted) and their item ids."""

    row: SegmentRow
    vectors: np.ndarray
    live: np.ndarray
    ids: np.ndarray


def stored_layout(catalog: Catalog) -> Layout:
    """The FAISS layout the index was last asked for (the `layout` setting)."""
    found = catalog.setting("layout")
    return Layout(**found) if found else DEFAULT_LAYOUT


def merge_as_policy_says(directory: Path, catalog: Catalog, layout: Layout, progress: bool = False) -> list[int]:
    """Run the merge policy's merges, planning again after each round until it asks for none (a
    merge can fill the tier above); returns the ids of the segments the merges wrote."""
    dim = read_manifest(directory).dim
    written: list[int] = []
    while True:
        rows = {row.id: row for row in catalog.segments()}
        merges = plan_merges(rows.values())
        if not merges:
            return written
        for merge in merges:
            group = [rows[number] for number in merge.segments]
            index_type = segment_type(sum(row.live for row in group), layout.requested)
            if progress:
                print(f"merging {len(group)} segment{'s' * (len(group) > 1)} ({merge.reason})", file=sys.stderr)
            merged = merge_segments(directory, catalog, dim, group, Layout(index_type, layout.max_memory), progress)
            written += [merged.id] if merged else []


def merge_all(directory: Path, catalog: Catalog, index_type: str, max_memory: int | None, progress: bool = False) -> SegmentRow:
    """Every segment into one of `index_type` (`auto`: by size, as index_embeddings picks), recorded as
    the index's layout for the merges to come; returns the new segment's row."""
    rows = catalog.segments()
    if not sum(row.live for row in rows):
        raise TusouError(f"{directory} holds no images: nothing to reindex")
    layout = Layout(index_type, max_memory)
    return merge_segments(directory, catalog, read_manifest(directory).dim, rows, layout, progress, record=layout)


def merge_segments(
    directory: Path, catalog: Catalog, dim: int, rows: list[SegmentRow], layout: Layout, progress: bool, record: Layout | None = None
) -> SegmentRow | None:
    """One merge: the live rows of `rows` into a new segment built as `layout` says (none when no row
    is live), committed in one transaction that also stores `record` as the index's layout."""
    sources = [_source(directory, row, dim) for row in rows]
    ids = np.concatenate([source.ids for source in sources])
    merged = None
    try:
        if len(ids):
            plan_index(len(ids), dim, layout.requested, layout.max_memory)  # a type that cannot be built is refused before any copy
            number = max(int(catalog.setting("next_segment", 0)), max(row.id for row in catalog.segments()) + 1)
            space.expect(space.segment_bytes(len(ids), dim, layout.requested) + catalog.path.stat().st_size)  # its WAL rewrites at most every page
            fill = lambda out: _copy(sources, out)  # noqa: E731
            merged = write_segment(directory, number, ids, dim, fill, layout.requested, layout.max_memory, progress)
        kill_point("merge")
        _commit(directory, catalog, sources, merged, record)
    finally:  # committed: the merged files are named by no row any more; failed: the new ones are not
        remove_unnamed(directory, catalog.segments())
    return merged


def _source(directory: Path, row: SegmentRow, dim: int) -> _Source:
    try:
        vectors, ids, deleted = segment_rows(directory, row, dim)
    except FileNotFoundError as exc:  # under the build lock nothing else removes files: it is damage
        raise missing_file(exc.filename, directory) from None
    live = np.setdiff1d(np.arange(row.count, dtype=np.int64), deleted, assume_unique=True)
    return _Source(row, vectors, live, np.asarray(ids[live], dtype=np.int64))


def _copy(sources: list[_Source], out: np.ndarray) -> None:
    """The live rows of every source, in order, into `out`: a block of sorted rows read at a time."""
    start = 0
    for source in sources:
        for block in range(0, len(source.live), COPY_BLOCK):
            rows = source.live[block : block + COPY_BLOCK]
            out[start : start + len(rows)] = source.vectors[rows]
            start += len(rows)


def _commit(directory: Path, catalog: Catalog, sources: list[_Source], merged: SegmentRow | None, record: Layout | None) -> None:
    """Swap `merged` in for the sources' segments and move their items to it, atomically.

    Items are found by their old place (the unique (segment, row) index), not by id: an item whose
    old row a build forgot to delete is not silently pulled back; the counts must agree or nothing
    changes.
    """
    live = sum(len(source.live) for source in sources)
    with catalog.transaction() as db:
        moved = 0
        if merged is not None:
            put_segment(db, merged)
            put_setting(db, "next_segment", merged.id + 1)
            moves = _moves(sources, merged.id)
            moved = db.executemany("UPDATE items SET segment = ?, row = row + ? WHERE segment = ? AND row BETWEEN ? AND ?", moves).rowcount
        drop_segments(db, [source.row.id for source in sources])
        marks = ", ".join("?" * len(sources))
        left = db.execute(f"SELECT count(*) FROM items WHERE segment IN ({marks})", [s.row.id for s in sources]).fetchone()[0]
        if moved != live or left:
            raise TusouError(
                f"{catalog.path} is damaged: the merged segments hold {live:,} live rows and {moved + left:,} items: "
                f"{rebuild_hint(directory)}"
            )
        if record is not None:
            put_setting(db, "layout", asdict(record))
        bump_generation(db)


def _moves(sources: list[_Source], segment: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(new segment, shift, old segment, first row, last row) of each run of consecutive live rows, in
    the order _copy wrote them: one UPDATE moves a run (at 100k items, 0.3 s where one a row takes 0.8)."""
    base = 0
    for source in sources:
        live = source.live
        breaks = np.flatnonzero(np.diff(live) != 1) + 1
        for start, end in zip(np.r_[0, breaks], np.r_[breaks, len(live)]) if len(live) else ():
            yield segment, int(base + start - live[start]), source.row.id, int(live[start]), int(live[end - 1])
        base += len(live)
