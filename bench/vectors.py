"""Synthetic vectors shaped like CLIP embeddings, for index benchmarks at any scale.

Real CLIP image vectors are not uniform on the sphere: they share a large common
direction, fall into semantic clusters, and spread along a few dominant axes; text
vectors sit in their own cone (the "modality gap"), so a text query is never close
to its image the way two images are. These generators mimic all four, deterministically
and in chunks, so ten million vectors never need to be in memory at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClipLikeSpace:
    dim: int = 768
    clusters: int = 4096
    seed: int = 0
    mean_weight: float = 0.9
    """Length of the shared direction: cosines between unrelated images are ≈0.3–0.4, as in CLIP."""
    cluster_weight: float = 1.0
    noise_weight: float = 0.55
    gap_weight: float = 1.2
    query_noise_weight: float = 2.0
    """Text vectors: a common offset (the gap) and more spread, so a query's best cosine is ≈0.3–0.5."""

    def _basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        mean = _unit(rng.standard_normal(self.dim))
        gap = _unit(rng.standard_normal(self.dim))
        spectrum = (np.arange(1, self.dim + 1, dtype=np.float64) ** -0.6).astype(np.float32)
        rotation = np.linalg.qr(rng.standard_normal((self.dim, self.dim)))[0].astype(np.float32)
        centres = _unit((rng.standard_normal((self.clusters, self.dim)).astype(np.float32) * spectrum) @ rotation)
        return mean, gap, spectrum / np.sqrt((spectrum**2).mean()), rotation, centres

    def chunks(self, count: int, *, queries: bool = False, chunk: int = 65_536, stream: int = 0) -> Iterator[np.ndarray]:
        """`count` unit float32 vectors in chunks; `queries=True` draws text-like vectors instead."""
        mean, gap, spectrum, rotation, centres = self._basis()
        for number, start in enumerate(range(0, count, chunk)):
            rows = min(chunk, count - start)
            rng = np.random.default_rng([self.seed, stream + (1_000_003 if queries else 0), number])
            members = centres[rng.integers(0, self.clusters, rows)]
            noise = (rng.standard_normal((rows, self.dim)).astype(np.float32) * spectrum) @ rotation / np.sqrt(self.dim)
            vectors = self.mean_weight * mean + self.cluster_weight * members
            if queries:
                vectors += self.gap_weight * gap + self.query_noise_weight * noise
            else:
                vectors += self.noise_weight * noise
            yield _unit(vectors)

    def array(self, count: int, **options: object) -> np.ndarray:
        return np.concatenate(list(self.chunks(count, **options)))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
