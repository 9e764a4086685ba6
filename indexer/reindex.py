"""`tusou reindex`: every segment merged into one of another FAISS type, from the stored vectors.

No image is read and no model is loaded: the float16 vectors are the source, so a reindex of a
million images takes the FAISS build's time only. The merged segment is trained and tuned again,
and its type becomes the index's layout, which later merges follow.

It is also the repair of a damaged or missing FAISS file: only the catalog, vectors, ids and
deletion records are read (a fault in those refuses, writing nothing), never the old FAISS files.
An index of format 1 is converted first, without re-embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from indexer import space
from indexer.build import build_lock
from indexer.convert import convert
from indexer.leftovers import remove_leftovers, removed_on_failure
from indexer.merge import merge_all, stored_layout
from retrieval.store.catalog import Catalog
from retrieval.store.manifest import IndexEntry, read_manifest
from retrieval.store.store import CATALOG


@dataclass(frozen=True)
class Reindexed:
    count: int
    """Live items, all in the one segment now."""
    merged: int
    """Segments merged into it."""
    entry: IndexEntry
    converted: bool
    """Whether the index was of format 1 and converted first."""


def reindex(directory: str | Path, index_type: str | None = None, max_memory: int | None = None, progress: bool = True) -> Reindexed:
    """Merge all of `directory` into one segment of `index_type` within `max_memory` (None: as the
    index's layout says)."""
    directory = Path(directory)
    read_manifest(directory)  # a clear error before taking the lock in a folder that is no index
    with space.reported(directory, "run the reindex again"), build_lock(directory):
        remove_leftovers(directory)
        with removed_on_failure(directory):
            converted = convert(directory, progress, check_faiss=False)  # the FAISS file is what a reindex may repair
            catalog = Catalog(directory / CATALOG)
            try:
                rows = catalog.segments()
                layout = stored_layout(catalog)
                merged = merge_all(directory, catalog, index_type or layout.requested, max_memory or layout.max_memory, progress)
            finally:
                catalog.close()
    return Reindexed(merged.count, len(rows), merged.index_entry, converted)
