"""The FAISS index types an index can be, as one table: everything else reads it.

Each type says how FAISS builds it (factory string), which class a file of it holds, what a
vector costs in memory, whether its scores are re-ranked exactly, and which search-time knob
is tuned for recall. No FAISS import here: the CLI's choices come from this table too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

HNSW_M = 32
PQ_BITS = 8


@dataclass(frozen=True)
class IndexType:
    name: str
    description: str
    faiss_class: str
    """The class `faiss.downcast_index` gives for a file of this type (checked on open)."""
    factory: Callable[[dict], str]
    """The faiss.index_factory string for the type's build parameters."""
    bytes_per_vector: Callable[[int, dict], float]
    """Memory per vector for dim d and the type's build parameters."""
    rerank: int = 0
    """Candidates fetched per result and re-scored exactly from the float16 embeddings (quantised
    types), so every type reports the same cosine for the same image."""
    knob: str | None = None
    """The search-time parameter tuned for recall: nprobe or ef_search."""


INDEX_TYPES: dict[str, IndexType] = {
    t.name: t
    for t in [
        IndexType("flat", "exact inner-product scan (float32)", "IndexFlatIP", lambda p: "Flat", lambda d, p: 4 * d),
        IndexType(
            "hnsw",
            f"HNSW graph over float32 vectors (M={HNSW_M}): fastest queries, most memory",
            "IndexHNSWFlat",
            lambda p: f"HNSW{p['M']},Flat",
            lambda d, p: 4 * d + 2 * HNSW_M * 4 * 1.05,
            knob="ef_search",
        ),
        IndexType(
            "ivf",
            "inverted lists of 8-bit scalar-quantised vectors, re-ranked exactly",
            "IndexIVFScalarQuantizer",
            lambda p: f"IVF{p['nlist']},SQ8",
            lambda d, p: d + 8,
            rerank=4,
            knob="nprobe",
        ),
        IndexType(
            "ivfpq",
            "inverted lists of product-quantised codes (m bytes a vector), re-ranked exactly",
            "IndexIVFPQ",
            lambda p: f"IVF{p['nlist']},PQ{p['m']}x{p['bits']}",
            lambda d, p: p.get("m", d // 8) * p.get("bits", PQ_BITS) / 8 + 8,
            rerank=32,
            knob="nprobe",
        ),
    ]
}
CHOICES = ("auto", *INDEX_TYPES)
KNOBS = frozenset(t.knob for t in INDEX_TYPES.values() if t.knob)
