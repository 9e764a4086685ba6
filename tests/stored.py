"""What an index holds, read straight from its store: each item's path and stored vector, in path order."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retrieval.store.store import open_store


def stored_vectors(index_dir: str | Path) -> dict[str, np.ndarray]:
    """Path → stored vector (float32, as stored: float16 precision), in path order."""
    store = open_store(index_dir)
    view = store.view()
    try:
        return {
            item.path: view.vectors(np.array([view.position_of({"segment": segment, "row": row})]))[0].astype(np.float32)
            for item, segment, row in store.catalog.all_items()
        }
    finally:
        store.close()
