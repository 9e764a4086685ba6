"""A segment's search on real FAISS indexes: deletions never come back, a filter never costs results."""

from __future__ import annotations

import numpy as np
import pytest

from bench.vectors import ClipLikeSpace
from indexer.faiss_build import exact_neighbours, index_embeddings, recall_at_k
from retrieval.store import segment as segment_module
from retrieval.store.segment import Segment

N, DIM = 6000, 64


@pytest.fixture(scope="module")
def space() -> tuple[np.ndarray, np.ndarray]:
    clip_like = ClipLikeSpace(dim=DIM, clusters=256, seed=3)
    return clip_like.array(N).astype(np.float16), clip_like.array(40, queries=True, stream=1)


def make(vectors: np.ndarray, kind: str, deleted: np.ndarray | None = None) -> Segment:
    index, entry = index_embeddings(vectors, kind)
    return Segment(7, vectors, np.arange(1000, 1000 + len(vectors), dtype=np.int64), index, entry,
                   np.array([], np.int64) if deleted is None else np.sort(deleted))


def brute_force(vectors: np.ndarray, query: np.ndarray, rows: np.ndarray, k: int) -> list[int]:
    scores = vectors[rows].astype(np.float32) @ query
    return [1000 + int(r) for r in rows[np.lexsort((rows, -scores))[:k]]]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_deleted_rows_never_come_back(space, kind):
    vectors, queries = space
    deleted = np.random.default_rng(0).choice(N, N // 3, replace=False)
    segment = make(vectors, kind, deleted)
    gone = set((1000 + deleted).tolist())
    for query in queries:
        _, ids = segment.search(query, 10)
        assert len(ids) == 10 and not gone & set(ids.tolist())


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
@pytest.mark.parametrize("share", [0.001, 0.1, 1.0])
def test_a_filter_that_is_scanned_gives_the_exact_top_k(space, kind, share):
    vectors, queries = space
    segment = make(vectors, kind)
    allowed = np.sort(np.random.default_rng(1).choice(N, max(1, int(N * share)), replace=False))
    for query in queries[:10]:
        _, ids = segment.search(query, 10, allowed)
        assert ids.tolist() == brute_force(vectors, query, allowed, 10)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
@pytest.mark.parametrize("share", [0.1, 0.5])
def test_a_filter_searched_by_ann_keeps_the_tuned_recall(space, kind, share, monkeypatch):
    """Above the scan threshold the ANN search runs restricted to the matching rows: its recall
    within the filter is at least what the segment was tuned to without one."""
    monkeypatch.setattr(segment_module, "EXACT_SCAN_ROWS", 100)
    vectors, queries = space
    segment = make(vectors, kind)
    allowed = np.sort(np.random.default_rng(2).choice(N, int(N * share), replace=False))
    found = np.array([segment.search(q, 10, allowed)[1] - 1000 for q in queries])
    truth = allowed[exact_neighbours(vectors[allowed], queries.astype(np.float32), 10)]
    assert found.shape == (len(queries), 10)
    assert set(found.ravel().tolist()) <= set(allowed.tolist())
    assert recall_at_k(found, truth) >= segment.entry.search["recall_at_10"] - 0.02


def test_a_filter_with_deletions_and_fewer_matches_than_k(space):
    vectors, queries = space
    segment = make(vectors, "hnsw", deleted=np.array([5, 6]))
    _, ids = segment.search(queries[0], 10, np.array([4, 5, 6, 7]))
    assert sorted(ids.tolist()) == [1004, 1007]
