"""A segment's search on real FAISS indexes: deletions never come back, a filter never costs results."""

from __future__ import annotations

import numpy as np
import pytest

from bench.vectors import ClipLikeSpace
from indexer.faiss_build import exact_neighbours, index_embeddings, recall_at_k
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
        _, rows = segment.search(query, 10)
        ids = segment.ids[rows]
        assert len(ids) == 10 and not gone & set(ids.tolist())


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
@pytest.mark.parametrize("share", [0.001, 0.1, 1.0])
def test_a_filter_that_is_scanned_gives_the_exact_top_k(space, kind, share):
    vectors, queries = space
    segment = make(vectors, kind)
    allowed = np.sort(np.random.default_rng(1).choice(N, max(1, int(N * share)), replace=False))
    for query in queries[:10]:
        _, rows = segment.search(query, 10, allowed)
        ids = segment.ids[rows]
        assert ids.tolist() == brute_force(vectors, query, allowed, 10)


def test_a_filter_with_deletions_and_fewer_matches_than_k(space):
    vectors, queries = space
    segment = make(vectors, "hnsw", deleted=np.array([5, 6]))
    _, rows = segment.search(queries[0], 10, np.array([4, 5, 6, 7]))
    assert sorted(segment.ids[rows].tolist()) == [1004, 1007]


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
@pytest.mark.parametrize("share", [0.02, 0.1, 0.5])
def test_a_post_filtered_ann_search_keeps_the_tuned_recall_and_skips_deletions(space, kind, share):
    """The plan for filters too broad to fetch: the ANN search widened by 1/share, its candidates
    post-filtered (here by a mask, in the store by one SQLite query), widened until k pass."""
    vectors, queries = space
    deleted = np.arange(0, N, 7)
    segment = make(vectors, kind, deleted)
    mask = np.random.default_rng(4).random(N) < share
    allowed = np.flatnonzero(mask & ~np.isin(np.arange(N), deleted))
    found = np.array([segment.search(q, 10, passes=lambda rows: mask[rows], share=share)[1] for q in queries])
    truth = allowed[exact_neighbours(vectors[allowed], queries.astype(np.float32), 10)]
    assert found.shape == (len(queries), 10) and set(found.ravel().tolist()) <= set(allowed.tolist())
    assert recall_at_k(found, truth) >= segment.entry.search["recall_at_10"] - 0.02
