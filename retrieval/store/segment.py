"""One immutable segment of an index: its float16 vectors, the FAISS index over them, row → item id.

A segment is written once and never changed. Which of its rows are deleted is kept beside it,
in a deletion record (sorted rows) written under a new name each time rows are deleted, so a
reader holding the old record still sees a consistent segment. Search skips deleted rows, and a
filtered search returns the exact top k within the filter where it scans, or the tuned ANN
search restricted to the matching rows where too many match to scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from retrieval.store import ann
from retrieval.store.index_types import INDEX_TYPES
from retrieval.store.manifest import IndexEntry

EXACT_SCAN_ROWS = 20_000
"""Matching rows up to which a filtered search scores them all exactly: at d=768 that is 30 MB of
float16 read and one small matrix product, a few milliseconds, and recall 1 by construction."""


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

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The top k (scores, item ids) of one query over the live rows (only `allowed` rows, sorted, when given)."""
        if allowed is not None:
            if len(self.deleted):
                allowed = allowed[~np.isin(allowed, self.deleted, assume_unique=True)]
            if len(allowed) <= EXACT_SCAN_ROWS or self.entry.type == "flat":
                return self._scan(query, k, allowed)
            return self._ann(query, k, faiss.IDSelectorBatch(allowed), len(allowed))
        if not len(self.deleted):
            return self._ann(query, k, None, len(self.ids))
        return self._ann(query, k, faiss.IDSelectorNot(faiss.IDSelectorBatch(self.deleted)), self.live)

    def _scan(self, query: np.ndarray, k: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of `rows`, best first; ties go to the lower row, as FAISS's flat scan does."""
        scores = np.asarray(self.vectors[rows], dtype=np.float32) @ np.asarray(query, dtype=np.float32)
        best = np.lexsort((rows, -scores))[:k]
        return scores[best], self.ids[rows[best]]

    def _knobs(self, available: int) -> dict:
        """The tuned knobs, widened for a search restricted to `available` of the rows: the top k of a
        share s of the rows lie about as deep as the top k/s of all, so nprobe / efSearch grow by 1/s."""
        widen = len(self.ids) / max(1, available)
        knobs = dict(self.entry.search)
        if "nprobe" in knobs:
            knobs["nprobe"] = min(self.entry.params.get("nlist", 1), int(round(knobs["nprobe"] * widen)))
        if "ef_search" in knobs:
            knobs["ef_search"] = min(4096, int(round(knobs["ef_search"] * widen)))
        return knobs

    def _ann(self, query: np.ndarray, k: int, selector: faiss.IDSelector | None, available: int) -> tuple[np.ndarray, np.ndarray]:
        """The index's own search (tuned knobs, exact re-ranking of quantised types), widened while a
        selector leaves it short of the k rows that exist."""
        k = min(k, available)
        params = ann.selected(self.faiss_index, selector, self._knobs(available)) if selector is not None else None
        rerank = INDEX_TYPES[self.entry.type].rerank
        wanted = k
        while True:
            scores, rows = ann.search(self.faiss_index, self.vectors, query[None], wanted, rerank, params)
            found = rows[0] >= 0
            if found.sum() >= k or wanted >= available:
                keep = np.flatnonzero(found)[:k]
                return scores[0][keep], self.ids[rows[0][keep]]
            wanted = min(available, wanted * 2)
