"""Building the FAISS index from stored embeddings: choosing a type, building it, tuning it.

Four types, as data in retrieval.store.index_types; `auto` picks the most accurate one that fits the
memory budget at the collection's size. Approximate types are then tuned: the smallest
nprobe / efSearch whose recall@10 against exact search reaches the target is kept, and the
recall measured is stored in the manifest beside it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import faiss
import numpy as np
from tqdm import tqdm

from retrieval.errors import TusouError
from retrieval.sizes import format_size
from retrieval.store import ann
from retrieval.store.index_types import CHOICES, HNSW_M, INDEX_TYPES, PQ_BITS, IndexType
from retrieval.store.manifest import IndexEntry

CHUNK = 65_536
"""Rows converted from float16 and added at a time: a 10M-vector build never holds them all."""
TARGET_RECALL = 0.95
TUNING_QUERIES = 200
FLAT_UP_TO = 50_000
"""Up to here an exact scan costs ≲15 ms a query at d=768 on two cores, under half of what the
text tower takes: no reason to approximate. Beyond, HNSW answers in about a millisecond."""
MAX_NLIST = 4096
"""Assigning n vectors to lists costs n × nlist × d: at 10M vectors 4,096 lists take ~5 minutes on
two cores, 16,384 would take ~20. Longer lists cost only a higher nprobe at query time."""
HNSW_EF_CONSTRUCTION = 64
MIN_TRAINING_PER_CENTROID = 39
"""faiss's own rule of thumb for k-means: fewer points per centroid than this trains badly."""
TRAINING_PER_CENTROID = 64
KMEANS_ITERATIONS = 10
"""Coarse centroids only route queries (re-ranking fixes scores): 10 iterations on 64 points a
centroid train 1M vectors' lists in seconds, where faiss's default (25 on 256) takes minutes."""


@dataclass(frozen=True)
class IndexPlan:
    type: str
    params: dict
    bytes: int
    """Estimated size of the index in memory (and on disk)."""

    @property
    def spec(self) -> IndexType:
        return INDEX_TYPES[self.type]


def default_budget() -> int:
    """Half of this machine's memory: the rest is for the model, the embeddings' page cache and the OS."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def _params(name: str, n: int, d: int, m: int | None = None) -> dict:
    """Build parameters for `n` vectors: nlist ≈ 2√n (a power of two) with enough training points."""
    if name in ("flat", "hnsw"):
        return {"M": HNSW_M} if name == "hnsw" else {}
    nlist = min(2 ** round(math.log2(max(1.0, 2 * math.sqrt(n)))), n // MIN_TRAINING_PER_CENTROID, MAX_NLIST)
    if nlist < 1:
        raise TusouError(f"{name} needs at least {MIN_TRAINING_PER_CENTROID} images to train; use --index-type flat")
    params = {"nlist": nlist}
    if name == "ivfpq":
        bits = min(PQ_BITS, int(math.log2(max(1, n // MIN_TRAINING_PER_CENTROID))))
        if bits < 4:
            raise TusouError(f"ivfpq needs at least {MIN_TRAINING_PER_CENTROID * 16} images to train; use --index-type flat")
        params |= {"m": m or _divisor_at_most(d, d // 8), "bits": bits}
    return params


def _divisor_at_most(d: int, limit: int) -> int:
    return max(m for m in range(1, max(1, limit) + 1) if d % m == 0)


def _estimate(name: str, n: int, d: int, params: dict) -> int:
    """Bytes of the index: per-vector storage plus coarse centroids and PQ codebooks."""
    centroids = params.get("nlist", 0) * d * 4
    codebooks = 2 ** params["bits"] * d * 4 if "m" in params else 0
    return int(n * INDEX_TYPES[name].bytes_per_vector(d, params) + centroids + codebooks)


def _auto_candidates(n: int, d: int) -> list[tuple[str, int | None]]:
    """`auto`'s preference, most accurate first: exact or HNSW, then ivf, then ivfpq ever smaller."""
    pq_sizes = sorted({_divisor_at_most(d, d // shrink) for shrink in (4, 8, 16, 32, 64)}, reverse=True)
    return [("flat" if n <= FLAT_UP_TO else "hnsw", None), ("ivf", None), *(("ivfpq", m) for m in pq_sizes)]


def plan_index(n: int, d: int, index_type: str = "auto", max_memory: int | None = None) -> IndexPlan:
    """The type and build parameters for `n` vectors of dim `d` within `max_memory` bytes."""
    budget = max_memory or default_budget()
    if index_type not in CHOICES:
        raise TusouError(f"unknown index type {index_type!r}: choose one of {', '.join(CHOICES)}")
    if index_type != "auto":
        params = _params(index_type, n, d)
        plan = IndexPlan(index_type, params, _estimate(index_type, n, d, params))
        if plan.bytes > budget:
            raise TusouError(
                f"a {index_type} index of {n:,} vectors needs about {format_size(plan.bytes)}, over the "
                f"{format_size(budget)} budget: raise --max-index-memory or use --index-type auto"
            )
        return plan
    for name, m in _auto_candidates(n, d):
        try:
            params = _params(name, n, d, m)
        except TusouError:  # too few vectors to train this type
            continue
        if _estimate(name, n, d, params) <= budget:
            return IndexPlan(name, params, _estimate(name, n, d, params))
    raise TusouError(f"{n:,} vectors of dim {d} do not fit in {format_size(budget)}: raise --max-index-memory")


def _empty_index(plan: IndexPlan, d: int) -> faiss.Index:
    index = faiss.index_factory(d, plan.spec.factory(plan.params), faiss.METRIC_INNER_PRODUCT)
    if plan.type == "hnsw":
        faiss.downcast_index(index).hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    elif plan.type in ("ivf", "ivfpq"):
        faiss.extract_index_ivf(index).cp.niter = KMEANS_ITERATIONS
    if plan.type == "ivfpq":
        faiss.downcast_index(index).do_polysemous_training = False  # minutes of training for a filter tusou does not use
    return index


def _rows(embeddings: np.ndarray, rows: np.ndarray | slice) -> np.ndarray:
    return np.ascontiguousarray(embeddings[rows], dtype=np.float32)


def build_faiss(embeddings: np.ndarray, plan: IndexPlan, progress: bool = False) -> faiss.Index:
    """The index of `plan` over the rows of `embeddings` (float16 or float32, memory-mapped is fine)."""
    n, d = embeddings.shape
    index = _empty_index(plan, d)
    if not index.is_trained and n:
        sample_size = min(n, max(TRAINING_PER_CENTROID * plan.params.get("nlist", 1), 2 ** plan.params.get("bits", 0) * 256))
        sample = np.sort(np.random.default_rng(0).choice(n, sample_size, replace=False))
        index.train(_rows(embeddings, sample))
    ivf = faiss.try_extract_index_ivf(index)
    assignments = _reserve_lists(ivf, embeddings, progress) if ivf is not None else None
    with tqdm(total=n, desc=f"indexing ({plan.type})", unit=" vec", disable=not progress or n < CHUNK) as bar:
        for start in range(0, n, CHUNK):
            rows = _rows(embeddings, slice(start, start + CHUNK))
            if assignments is None:
                index.add(rows)
            else:
                lists = np.ascontiguousarray(assignments[start : start + len(rows)])
                ivf.add_core(len(rows), faiss.swig_ptr(rows), None, faiss.swig_ptr(lists))
            bar.update(len(rows))
    return index


def _reserve_lists(ivf: faiss.IndexIVF, embeddings: np.ndarray, progress: bool) -> np.ndarray:
    """Each vector's list, with every list's memory reserved at its final size.

    faiss grows a list by doubling as vectors arrive, which at 10M vectors held ~40% more
    memory than the index itself; assigning first (the cost add() pays anyway) avoids it.
    """
    n = len(embeddings)
    assignments = np.empty(n, dtype=np.int64)
    with tqdm(total=n, desc="assigning to lists", unit=" vec", disable=not progress or n < CHUNK) as bar:
        for start in range(0, n, CHUNK):
            rows = _rows(embeddings, slice(start, start + CHUNK))
            assignments[start : start + len(rows)] = ivf.quantizer.search(rows, 1)[1][:, 0]
            bar.update(len(rows))
    for number, size in enumerate(np.bincount(assignments, minlength=ivf.nlist)):
        ivf.invlists.resize(number, int(size))  # grow to the exact size, then empty: the capacity stays
        ivf.invlists.resize(number, 0)
    return assignments


def exact_neighbours(embeddings: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Rows of the exact top-k per query, scanning `embeddings` in chunks (any size on disk)."""
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for start in range(0, len(embeddings), CHUNK):
        block = _rows(embeddings, slice(start, start + CHUNK))
        scores, rows = faiss.knn(queries, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, np.where(rows >= 0, rows + start, -1))
    heap.finalize()
    return heap.I


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the exact top-k that the index returned, averaged over queries."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))


def tuning_queries(embeddings: np.ndarray, count: int = TUNING_QUERIES, seed: int = 0) -> np.ndarray:
    """Stored vectors pushed off by the difference of two others (noise shaped like the data).

    Text queries lie off the image vectors' manifold, where approximate indexes do worst;
    stored vectors, or isotropic noise that is nearly orthogonal to the data, would flatter
    the index. On CLIP-like vectors this measures recall at or below that of text queries.
    """
    rng = np.random.default_rng(seed)
    base, plus, minus = (_rows(embeddings, rng.choice(len(embeddings), count)) for _ in range(3))
    queries = base + plus - minus
    return queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)


def tune(index: faiss.Index, embeddings: np.ndarray, plan: IndexPlan, target: float = TARGET_RECALL, k: int = 10) -> dict:
    """Search parameters for `index`: the smallest knob value whose recall@k reaches `target`."""
    spec = plan.spec
    k = min(k, len(embeddings))
    info = {"rerank": spec.rerank} if spec.rerank else {}
    if spec.knob is None or k == 0:
        return info | {"recall_at_10": 1.0}
    queries = tuning_queries(embeddings)
    truth = exact_neighbours(embeddings, queries, k)
    steps = sorted({int(base * 2**i) for i in range(17) for base in (2, 3)} | {1})  # 1, 2, 3, 4, 6, 8, 12, 16, 24, ...
    values = [v for v in steps if v <= plan.params["nlist"]] if spec.knob == "nprobe" else [v for v in steps if 16 <= v <= 4096]
    for value in values:
        ann.apply_params(index, {spec.knob: value})
        _, found = ann.search(index, embeddings, queries, k, spec.rerank)
        recall = recall_at_k(found, truth)
        if recall >= target:
            break
    return info | {spec.knob: value, "recall_at_10": round(recall, 4), "tuning_queries": len(queries)}


def index_embeddings(
    embeddings: np.ndarray, requested: str = "auto", max_memory: int | None = None, progress: bool = False
) -> tuple[faiss.Index, IndexEntry]:
    """Plan, build and tune the index over `embeddings`; returns it and its manifest entry."""
    plan = plan_index(len(embeddings), embeddings.shape[1], requested, max_memory)
    index = build_faiss(embeddings, plan, progress)
    search = tune(index, embeddings, plan)
    ann.apply_params(index, search)
    return index, IndexEntry(plan.type, requested, max_memory, plan.params, search, plan.bytes)
