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
        _, rows = segment.search(query, 10)
        ids = segment.ids[rows]
        assert len(ids) == 10 and not gone & set(ids.tolist())


@pytest.mark.parametrize("kind, share", [("flat", 0.001), ("flat", 0.1), ("flat", 1.0), ("hnsw", 0.001), ("hnsw", 0.04), ("ivf", 0.001), ("ivf", 0.04)])
def test_a_filter_on_a_flat_segment_or_few_rows_gives_the_exact_top_k(space, kind, share):
    """Exact: a flat segment's own search restricted to the rows, or on an ANN segment, few rows scanned."""
    vectors, queries = space
    segment = make(vectors, kind)
    allowed = np.sort(np.random.default_rng(1).choice(N, max(1, int(N * share)), replace=False))
    for query in queries[:10]:
        scores, rows = segment.search(query, 10, allowed)
        truth = np.array(brute_force(vectors, query, allowed, 10)) - 1000
        assert set(rows.tolist()) <= set(allowed.tolist())
        np.testing.assert_allclose(scores, vectors[truth].astype(np.float32) @ query, atol=1e-3)  # the top k, up to ties


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
@pytest.mark.parametrize("share", [0.1, 0.5])
def test_many_allowed_rows_are_selected_in_faiss_keeping_the_tuned_recall(space, kind, share, monkeypatch):
    """Allowed rows beyond what is scanned: the segment's own search restricted to them by a bitmap,
    widened by their share; exact on a flat segment, at least the tuned recall on an ANN one, and
    never a deleted or unallowed row."""
    monkeypatch.setattr(segment_module, "SCAN_ROWS", 100)
    vectors, queries = space
    deleted = np.arange(0, N, 7)
    segment = make(vectors, kind, deleted)
    allowed = np.sort(np.random.default_rng(5).choice(N, int(N * share), replace=False))
    live = allowed[~np.isin(allowed, deleted)]
    found = np.array([segment.search(q, 10, allowed)[1] for q in queries])
    truth = live[exact_neighbours(vectors[live], queries.astype(np.float32), 10)]
    assert found.shape == (len(queries), 10) and set(found.ravel().tolist()) <= set(live.tolist())
    assert recall_at_k(found, truth) >= segment.entry.search.get("recall_at_10", 1.0) - 0.02  # flat: 1.0, up to near-ties


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
