"""One immutable segment of an index: its float16 vectors, the FAISS index over them, row → item id.

A segment is written once and never changed. Which of its rows are deleted is kept beside it,
in a deletion record (sorted rows) written under a new name each time rows are deleted, so a
reader holding the old record still sees a consistent segment. Search skips deleted rows, and a
filtered search returns the exact top k within the filter where few items match (their vectors
scanned), or the tuned ANN search widened and post-filtered where too many match to fetch.
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

        `allowed` (sorted rows, few: retrieval.store.store.EXACT_SCAN_ROWS): only those, scanned exactly. `passes`: only the rows it
        admits, about a `share` of all; the ANN search is widened by 1/share and its candidates
        post-filtered, widening again until k pass or none are left.
        """
        if allowed is not None:
            if len(self.deleted):
                allowed = allowed[~np.isin(allowed, self.deleted, assume_unique=True)]
            return self._scan(query, k, allowed)
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
            if "ef_search" in knobs and restricted:
                knobs = {**knobs, "ef_search": min(4096, max(int(knobs["ef_search"]), wanted))}
                params = ann.selected(self.faiss_index, selector, knobs)


Passes = Callable[[np.ndarray], np.ndarray]
"""Which of some rows pass a filter (a boolean mask), for post-filtering ANN candidates."""


def open_segment(directory: Path, row: SegmentRow, dim: int, mmap: bool = False) -> Segment:
    """A segment's files as its catalog row names them, each checked; damage is one line naming the
    file (a bad FAISS file alone is restored by a reindex from the intact vectors). `mmap` maps the
    FAISS file rather than reading it: a check that costs little at any size (read_faiss)."""
    vectors, ids, deleted = segment_rows(directory, row, dim)
    index = read_faiss(directory / row.files["faiss"], row.index_entry.type, dim, row.count, reindex_hint(directory), mmap)
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
    """Every file of every segment checked, the FAISS files mapped, not read: what a build or `tusou
    info` checks before trusting an index. A missing file is one line naming it."""
    for row in rows:
        try:
            open_segment(directory, row, dim, mmap=True)
        except FileNotFoundError as exc:
            raise missing_file(exc.filename, directory) from None


def missing_file(path: str | None, directory: Path) -> TusouError:
    """The one line for a file the catalog names that is not there."""
    return TusouError(f"{path} is missing: {rebuild_hint(directory)}")
