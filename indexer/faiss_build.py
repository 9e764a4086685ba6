"""Building the FAISS index from stored embeddings."""

from __future__ import annotations

import faiss
import numpy as np


def build_faiss(embeddings: np.ndarray, index_type: str = "flat") -> tuple[faiss.Index, dict]:
    """An inner-product index over L2-normalised rows (cosine similarity), and its description."""
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    if index_type != "flat":
        raise ValueError(f"unknown index type {index_type!r}")
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index, {"type": "flat", "params": {}}
