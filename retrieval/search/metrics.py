"""Retrieval metrics as Chinese-CLIP's evaluation.py and CLIP_benchmark define them.

Recall@K here is hit@K: a query counts as a hit when any of its correct items is among its
top K, averaged over queries. Rankings are by score, ties broken by the lower item index,
so results never depend on the order FAISS or BLAS happened to return.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KS = (1, 5, 10)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best columns of each row: highest score first, ties by lower index."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    order = np.lexsort((part, -np.take_along_axis(scores, part, axis=1)), axis=1)
    return np.take_along_axis(part, order, axis=1)


def hits_at_k(ranked: np.ndarray, correct: Sequence[set[int] | frozenset[int]], ks: Sequence[int] = KS) -> dict[int, float]:
    """Recall@K for each K, from each query's ranked item indices and its set of correct items."""
    first_hit = np.array([next((rank for rank, item in enumerate(row) if item in good), len(row)) for row, good in zip(ranked, correct)])
    return {k: float(np.mean(first_hit < k)) for k in ks}


def rank_items(queries: np.ndarray, items: np.ndarray, k: int, budget: int = 200_000_000) -> np.ndarray:
    """Each query's k best items (row indices), scored in blocks of at most `budget` scores so a
    30k-image x 150k-caption run stays within a few GB."""
    if len(queries) == 0 or len(items) == 0:
        return np.zeros((len(queries), 0), dtype=np.int64)
    block = max(1, budget // len(items))
    return np.concatenate([top_k(queries[s : s + block] @ items.T, k) for s in range(0, len(queries), block)])


def recall_at_k(
    queries: np.ndarray, items: np.ndarray, correct: Sequence[set[int] | frozenset[int]], ks: Sequence[int] = KS
) -> dict[int, float]:
    """hit@K of `queries` against `items` (L2-normalised rows)."""
    return hits_at_k(rank_items(queries, items, max(ks)), correct, ks)
