"""One immutable segment of an index: its float16 vectors, the FAISS index over them, row → item id.

A segment is written once and never changed. Which of its rows are deleted is kept beside it,
in a deletion record (sorted rows) written under a new name each time rows are deleted, so a
reader holding the old record still sees a consistent segment. Search skips deleted rows. A
filtered search given the matching rows runs the segment's own search restricted to them (a bitmap
FAISS checks before scoring a row), widened by their share, or on an ANN segment where they are few,
scores them exactly; given only a test of rows (too many match to fetch), it runs the search widened and
post-filters its candidates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from retrieval.errors import TusouError
from retrieval.store import ann
from retrieval.store.arrays import read_array, read_faiss, reindex_hint, tuned
from retrieval.store.catalog import SegmentRow
from retrieval.store.index_types import INDEX_TYPES
from retrieval.store.manifest import IndexEntry, rebuild_hint

SCAN_ROWS = 20_000
"""Allowed rows of an ANN segment up to which they are scored exactly (their float16 vectors, 30 MB
at d=768): a few milliseconds, and recall 1 by construction. Beyond it the segment's own search
restricted to them costs less. (A flat segment's own search is exact, and faster than this scan.)"""
SCAN_SHARE = 0.05
"""...and up to this share of its rows: beyond it, its search widened by 1/share (at most ×20) and
restricted to them costs less than the scan (which converts float16 one value at a time)."""
SCAN_BLOCK = 1024
"""Rows scored at a time by an exact scan: 3 MB of float32 at d=768."""


@dataclass
class Segment:
    id: int
    vectors: np.ndarray
    """float16, one row per row of the segment (memory-mapped)."""
    ids: np.ndarray
    """int64: the item id of each row."""
    faiss_index: faiss.Index
    entry: IndexEntry
    deleted: np.ndarray
    """Sorted rows no longer in the index."""

    @property
    def live(self) -> int:
        return len(self.ids) - len(self.deleted)

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None, passes: Passes | None = None, share: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top k (scores, rows) of one query over the live rows.

        `allowed` (sorted rows): only those, by the segment's search restricted to them (a flat
        segment's is exact) and widened by their share; on an ANN segment where they are few
        (SCAN_ROWS, SCAN_SHARE), scored exactly instead.
        `passes`: only the rows it admits, about a `share` of all; the search is widened by 1/share
        and its candidates post-filtered, widening again until k pass or none are left.
        """
        if allowed is not None:
            if len(self.deleted):
                allowed = allowed[~np.isin(allowed, self.deleted, assume_unique=True)]
            if len(allowed) <= min(SCAN_ROWS, SCAN_SHARE * len(self.ids)) and INDEX_TYPES[self.entry.type].knob is not None:
                return self._scan(query, k, allowed)
            return self._ann(query, k, _bitmap(allowed, len(self.ids)), len(allowed) / len(self.ids), len(allowed))
        unwanted = faiss.IDSelectorNot(faiss.IDSelectorBatch(self.deleted)) if len(self.deleted) else None
        return self._ann(query, k, unwanted, share * self.live / max(1, len(self.ids)), self.live, passes)

    def _scan(self, query: np.ndarray, k: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of `rows`, best first; ties go to the lower row, as FAISS's flat scan does.
        Scored in blocks, so each block's float32 copy stays in the cache."""
        query = np.asarray(query, dtype=np.float32)
        scores = np.empty(len(rows), dtype=np.float32)
        for start in range(0, len(rows), SCAN_BLOCK):
            block = rows[start : start + SCAN_BLOCK]
            scores[start : start + len(block)] = self.vectors[block].astype(np.float32) @ query
        best = np.lexsort((rows, -scores))[:k]
        return scores[best], rows[best]

    def _knobs(self, share: float) -> dict:
        """The tuned knobs, widened for a search restricted to a `share` of the rows: the top k of a
        share s of the rows lie about as deep as the top k/s of all, so nprobe / efSearch grow by 1/s."""
        widen = 1 / max(share, 1 / max(1, len(self.ids)))
        knobs = dict(self.entry.search)
        if "nprobe" in knobs:
            knobs["nprobe"] = min(self.entry.params.get("nlist", 1), int(round(knobs["nprobe"] * widen)))
        if "ef_search" in knobs:
            knobs["ef_search"] = min(4096, int(round(knobs["ef_search"] * widen)))
        return knobs

    def _ann(
        self, query: np.ndarray, k: int, selector: faiss.IDSelector | None, share: float, available: int, passes: Passes | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The index's own search (tuned knobs, exact re-ranking of quantised types), restricted by
        `selector` and post-filtered by `passes`, widened while that leaves it short of k rows."""
        k = min(k, available)
        restricted = selector is not None or passes is not None
        knobs = self._knobs(share) if restricted else self.entry.search
        params = ann.selected(self.faiss_index, selector, knobs) if restricted else None
        rerank = INDEX_TYPES[self.entry.type].rerank
        wanted = min(available, max(k, int(np.ceil(k / max(share, 1e-9)))) if passes is not None else k)
        while True:
            scores, rows = ann.search(self.faiss_index, self.vectors, query[None], wanted, rerank, params)
            found = rows[0] >= 0
            if passes is not None:
                found[found] = passes(rows[0][found])
            if found.sum() >= k or wanted >= available:
                keep = np.flatnonzero(found)[:k]
                return scores[0][keep], rows[0][keep]
            wanted = min(available, wanted * 2)
            if restricted:  # the selector or the post-filter left it short: look wider
                knobs = self._wider(knobs, wanted)
                params = ann.selected(self.faiss_index, selector, knobs)

    def _wider(self, knobs: dict, wanted: int) -> dict:
        """The knobs of the next, wider try: twice the lists probed, a candidate list of `wanted` at least."""
        knobs = dict(knobs)
        if "nprobe" in knobs:
            knobs["nprobe"] = min(self.entry.params.get("nlist", 1), 2 * int(knobs["nprobe"]))
        if "ef_search" in knobs:
            knobs["ef_search"] = min(4096, max(int(knobs["ef_search"]), wanted))
        return knobs


Passes = Callable[[np.ndarray], np.ndarray]
"""Which of some rows pass a filter (a boolean mask), for post-filtering ANN candidates."""


def _bitmap(rows: np.ndarray, count: int) -> faiss.IDSelector:
    """A selector of `rows` out of `count`: one bit a row, tested before a row is scored."""
    bits = np.zeros(count, dtype=bool)
    bits[rows] = True
    packed = np.packbits(bits, bitorder="little")
    selector = faiss.IDSelectorBitmap(count, faiss.swig_ptr(packed))
    selector.referenced_objects = [packed]  # FAISS keeps a pointer only
    return selector


def open_segment(directory: Path, row: SegmentRow, dim: int) -> Segment:
    """A segment's files as its catalog row names them, each checked; damage is one line naming the
    file (a bad FAISS file alone is restored by a reindex from the intact vectors). Its files are
    mapped, never read whole, as they never change: opening costs the same at any size, and a search
    brings in only the pages it touches (the inverted lists it probes, the rows it re-ranks)."""
    vectors, ids, deleted = segment_rows(directory, row, dim)
    index = read_faiss(directory / row.files["faiss"], row.index_entry.type, dim, row.count, reindex_hint(directory), mmap=True)
    return Segment(row.id, vectors, ids, tuned(index, row.index_entry.search), row.index_entry, deleted)


def segment_rows(directory: Path, row: SegmentRow, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A segment's vectors (mapped), ids and deleted rows, checked against its catalog row; its FAISS
    file is not read (a merge or a reindex builds a new one from these)."""
    rebuild = rebuild_hint(directory)
    vectors = read_array(directory / row.files["vectors"], np.float16, 2, rebuild, dim)
    ids = read_array(directory / row.files["ids"], np.int64, 1, rebuild)
    if len(vectors) != row.count or len(ids) != row.count:
        raise TusouError(
            f"{directory} is damaged: segment {row.id} has {len(vectors)} vectors and {len(ids)} ids, its catalog row says {row.count}: {rebuild}"
        )
    deleted = read_array(directory / row.files["deleted"], np.int64, 1, rebuild) if "deleted" in row.files else np.empty(0, np.int64)
    if len(deleted) != row.deleted:
        raise TusouError(f"{directory / row.files['deleted']} is damaged (it holds {len(deleted)} rows, the catalog says {row.deleted}): {rebuild}")
    return vectors, ids, np.asarray(deleted)


def check_segments(directory: Path, rows: list[SegmentRow], dim: int) -> None:
    """Every file of every segment checked (mapped, not read): what a build or `tusou info` checks
    before trusting an index. A missing file is one line naming it."""
    for row in rows:
        try:
            open_segment(directory, row, dim)
        except FileNotFoundError as exc:
            raise missing_file(exc.filename, directory) from None


def missing_file(path: str | None, directory: Path) -> TusouError:
    """The one line for a file the catalog names that is not there."""
    return TusouError(f"{path} is missing: {rebuild_hint(directory)}")
