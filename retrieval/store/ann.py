"""Searching a FAISS index of any tusou type: its search parameters, batching, exact re-ranking.

Quantised types (`ivf`, `ivfpq`) return approximate scores; their candidates are re-scored
from the stored float16 embeddings, so every index type reports the same cosine for the
same image, and a score threshold means the same thing whatever the index.
"""

from __future__ import annotations

import faiss
import numpy as np

faiss.cvar.distance_compute_blas_threshold = 1
"""faiss uses BLAS only when queries × dim ≥ 128,000 (166 queries at d=768); below that it
rescans the whole index once per query. One GEMM is as fast for one query and 10× faster
for a batch of 64 (bench/index_types.py measures it)."""


def apply_params(index: faiss.Index, params: dict) -> None:
    """Set the search-time knobs a build tuned (nprobe for IVF types, efSearch for HNSW)."""
    if "nprobe" in params:
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
    if "ef_search" in params:
        faiss.downcast_index(index).hnsw.efSearch = int(params["ef_search"])


def _spread_work(index: faiss.Index, queries: int) -> None:
    """IVF search splits work by query; one query alone would use one core, so split its lists
    instead (twice the single-query QPS on two cores, bench/index_types.py)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.parallel_mode = 1 if queries == 1 else 0


def selected(index: faiss.Index, selector: faiss.IDSelector, knobs: dict) -> faiss.SearchParameters:
    """Search parameters that keep only the rows `selector` admits, with the tuned knobs (a
    parameters object replaces the index's own nprobe / efSearch, so they are carried over)."""
    if faiss.try_extract_index_ivf(index) is not None:
        return faiss.SearchParametersIVF(sel=selector, nprobe=int(knobs.get("nprobe", faiss.extract_index_ivf(index).nprobe)))
    if hasattr(faiss.downcast_index(index), "hnsw"):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=int(knobs.get("ef_search", faiss.downcast_index(index).hnsw.efSearch)))
    return faiss.SearchParameters(sel=selector)


def search(
    index: faiss.Index, embeddings: np.ndarray, queries: np.ndarray, k: int, rerank: int = 0,
    params: faiss.SearchParameters | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, rows) for each query row; rows are -1 where fewer than k items exist.

    `rerank` > 0 fetches k × rerank candidates and re-scores them exactly from `embeddings`;
    `params` (`selected`) keeps only some rows.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    _spread_work(index, len(queries))
    if not rerank:
        return index.search(queries, k, params=params)
    _, candidates = index.search(queries, min(index.ntotal, k * rerank), params=params)
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    rows = np.full((len(queries), k), -1, dtype=np.int64)
    for q, found in enumerate(candidates):
        found = found[found >= 0]
        order = np.argsort(found)
        exact = np.asarray(embeddings[found[order]], dtype=np.float32) @ queries[q]
        best = np.argsort(-exact, kind="stable")[:k]
        scores[q, : len(best)] = exact[best]
        rows[q, : len(best)] = found[order][best]
    return scores, rows
