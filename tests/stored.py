"""An index read back for a test's assertions, through the store's own reader: its items in path
order, their vectors in the same order, and what the catalog says about its segments."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.store.catalog import SegmentRow
from retrieval.store.manifest import Manifest
from retrieval.store.records import CatalogItem
from retrieval.store.store import open_store


@dataclass
class Stored:
    manifest: Manifest
    items: list[CatalogItem]
    embeddings: np.ndarray
    """float16, row i is the vector of items[i]."""
    generation: int
    segments: list[SegmentRow]
    """The catalog's segment rows (none for a format-1 index)."""
    layout: dict | None

    @property
    def index_types(self) -> set[str]:
        return {row.index_entry.type for row in self.segments}


def read_back(directory: str | Path) -> Stored:
    store = open_store(directory)
    try:
        view = store.view()
        base = {segment.id: int(start) for segment, start in zip(view.segments, view.bases)}
        found = list(store.catalog.all_items())
        positions = np.array([base[segment] + row for _, segment, row in found], dtype=np.int64)
        embeddings = view.vectors(positions) if found else np.empty((0, store.manifest.dim), np.float16)
        segments = store.catalog.segments() if store.manifest.segmented else []
        items = [item for item, _, _ in found]
        return Stored(store.manifest, items, embeddings, store.generation, segments, store.catalog.setting("layout"))
    finally:
        store.close()


def stored_vectors(directory: str | Path) -> dict[str, np.ndarray]:
    """Path → stored vector (float32, at float16 precision), in path order."""
    stored = read_back(directory)
    return {item.path: vector.astype(np.float32) for item, vector in zip(stored.items, stored.embeddings)}
