"""Rebuilding an index's FAISS file as another type, from its stored embeddings.

No image is read and no model is loaded: the float16 embeddings are the source, so a
reindex of a million images takes the FAISS build's time only. The catalog and embeddings
files stay as they are; a new FAISS file and manifest make the next generation.

It is also the repair of a damaged or missing FAISS file: only the manifest, catalog and
embeddings are checked (a fault in those refuses, writing nothing), never the old FAISS file.
"""

from __future__ import annotations

from pathlib import Path

from indexer.build import build_lock
from indexer.faiss_build import index_embeddings
from retrieval.store.index_store import open_vectors, remove_leftovers, write_index
from retrieval.store.manifest import Manifest, read_manifest


def reindex(directory: str | Path, index_type: str = "auto", max_memory: int | None = None, progress: bool = True) -> Manifest:
    directory = Path(directory)
    read_manifest(directory)  # a clear error before taking the lock in a folder that is no index
    with build_lock(directory):
        remove_leftovers(directory)
        manifest = read_manifest(directory)
        _, embeddings = open_vectors(directory, manifest)  # catalog and embeddings agree: safe to keep them
        faiss_index, entry = index_embeddings(embeddings, index_type, max_memory, progress)
        return write_index(
            directory,
            model=manifest.model,
            items=None,
            embeddings=None,
            faiss_index=faiss_index,
            index=entry,
            previous=manifest,
        )
