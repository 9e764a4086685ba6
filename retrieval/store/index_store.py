"""Reading an index of format 1: item catalog (JSONL), float16 embeddings, FAISS index, and
the manifest that names them (retrieval.store.manifest).

Each write of that format made a new *generation* of the three data files and swapped the
manifest to it. tusou no longer writes it: such an index opens read-only as one segment
(retrieval.store.store) and the next build converts it (indexer.convert), both through here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from retrieval.errors import TusouError
from retrieval.store import ann, arrays
from retrieval.store.arrays import reindex_hint
from retrieval.store.manifest import ROLES, Manifest, read_manifest, rebuild_hint
from retrieval.store.model_ref import BOTH, OtherWeights, Tower
from retrieval.store.records import CatalogItem, ImageRecord  # noqa: F401  (where builds and tools import them from)

if TYPE_CHECKING:
    from retrieval.models.model import EmbeddingModel

REBUILD = "rebuild it with `tusou index PATH --out DIR`"


@dataclass
class StoredIndex:
    directory: Path
    manifest: Manifest
    items: list[CatalogItem]
    embeddings: np.ndarray
    """float16, one row per catalog item, in catalog order (FAISS ids are row numbers)."""
    faiss_index: faiss.Index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, rows) per query row, with the search parameters the build tuned."""
        rerank = int(self.manifest.index.search.get("rerank", 0))
        return ann.search(self.faiss_index, self.embeddings, queries, k, rerank)

    def check_weights(self, model: EmbeddingModel, towers: tuple[Tower, ...] = BOTH) -> None:
        """Refuse a model whose `towers` are not the ones that built this index (a precision cast keeps the fingerprints)."""
        try:
            self.manifest.model.verify(model, towers)
        except OtherWeights as exc:
            raise TusouError(f"{self.directory} was built with {exc}: load the same weights or build a new index") from None


def read_catalog(path: Path, fix: str = REBUILD) -> list[CatalogItem]:
    items = []
    try:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                try:
                    entry = json.loads(raw.decode("utf-8"))  # per line, so a bad byte names its line
                    items.append(CatalogItem(**entry) if isinstance(entry, dict) else _not_an_item(entry))
                except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
                    why = (
                        "cut short" if not raw.endswith(b"\n")
                        else "not UTF-8 text" if isinstance(exc, UnicodeDecodeError)
                        else "not JSON" if isinstance(exc, json.JSONDecodeError)
                        else str(exc)
                    )
                    raise TusouError(f"{path} line {number} is damaged ({why}): {fix}") from None
    except OSError as exc:
        raise TusouError(f"{path} cannot be read ({exc.strerror or exc}): {fix}") from None
    return items


def _not_an_item(entry: object) -> CatalogItem:
    raise TypeError(f"a JSON {type(entry).__name__}, not an object")


def data_paths(directory: Path, manifest: Manifest) -> dict[str, Path]:
    """The manifest's catalog, embeddings and FAISS files; a missing catalog or embeddings file is a
    one-line error (a missing FAISS file is `read_faiss`'s, which knows a reindex restores it)."""
    paths = {role: directory / manifest.files[role] for role in ROLES}
    for role in ("catalog", "embeddings"):
        if not paths[role].is_file():
            raise TusouError(f"{directory} is damaged: its {role} file {paths[role].name} is missing: {rebuild_hint(directory)}")
    return paths


def open_vectors(directory: Path, manifest: Manifest) -> tuple[list[CatalogItem], np.ndarray]:
    """Catalog and embeddings, checked against each other and the manifest.

    These are what a reindex rebuilds the FAISS file from, so any fault here needs a full rebuild.
    """
    fix = rebuild_hint(directory)
    paths = data_paths(directory, manifest)
    items = read_catalog(paths["catalog"], fix)
    embeddings = arrays.read_array(paths["embeddings"], np.float16, 2, fix, manifest.dim)
    if not manifest.count == len(items) == len(embeddings):
        raise TusouError(
            f"{directory} is inconsistent (item counts: manifest {manifest.count}, catalog {len(items)}, "
            f"embeddings {len(embeddings)}): {fix}"
        )
    return items, embeddings


def read_faiss(directory: Path, manifest: Manifest, mmap: bool = False) -> faiss.Index:
    """The FAISS file, checked against the manifest (retrieval.store.arrays.read_faiss), its tuned
    search parameters set; any fault points at `tusou reindex`. `mmap`: for a cheap check."""
    path = directory / manifest.files["faiss"]
    index = arrays.read_faiss(path, manifest.index.type, manifest.dim, manifest.count, reindex_hint(directory), mmap)
    return arrays.tuned(index, manifest.index.search)


def open_index(directory: str | Path, mmap: bool = False) -> StoredIndex:
    """Read and cross-check an index directory; any inconsistency is a one-line TusouError.

    Catalog and embeddings are checked before the FAISS file, so a fault only the FAISS file
    has gets the cheap fix (`tusou reindex`) and every other one a rebuild.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    items, embeddings = open_vectors(directory, manifest)
    faiss_index = read_faiss(directory, manifest, mmap)
    return StoredIndex(directory, manifest, items, embeddings, faiss_index)
