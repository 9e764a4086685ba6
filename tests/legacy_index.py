"""A format-1 index, written the way tusou wrote one before the segment store: a JSON manifest
naming one generation of files, a JSONL catalog, np.save'd float16 embeddings and a FAISS file
(faiss.write_index). Tests of the legacy path open and convert what this writes."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np

from retrieval.store.model_ref import ModelRef
from retrieval.store.records import CatalogItem
from tests.stored import read_back

FORMAT_1_FIELDS = ("path", "size", "mtime_ns", "sha256", "width", "height", "change_key", "id")
"""What a format-1 catalog line held (no metadata); change_key only when there was one."""


def write_legacy_index(directory: Path, model: ModelRef, items: list[CatalogItem], vectors: np.ndarray, generation: int = 1) -> None:
    """A flat format-1 index over `vectors`, one row per item in the order given."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {"catalog": f"catalog.{generation}.jsonl", "embeddings": f"embeddings.{generation}.npy", "faiss": f"index.{generation}.faiss"}
    lines = [{key: getattr(item, key) for key in FORMAT_1_FIELDS if key != "change_key" or item.change_key is not None} for item in items]
    (directory / files["catalog"]).write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    np.save(directory / files["embeddings"], np.asarray(vectors, dtype=np.float16))
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(np.asarray(vectors, dtype=np.float32))
    faiss.write_index(flat, str(directory / files["faiss"]))
    index = {"type": "flat", "requested": "auto", "max_memory": None, "params": {}, "search": {"recall_at_10": 1.0}, "bytes": flat.ntotal * flat.d * 4}
    manifest = {
        "model": model.to_dict(), "dim": int(vectors.shape[1]), "count": len(items), "index": index, "files": files,
        "generation": generation, "next_id": max((item.id + 1 for item in items), default=0), "metric": "inner_product",
        "format_version": 1, "tool_version": "0.1.0", "created": "2025-06-01T08:00:00+00:00", "updated": "2025-06-01T08:00:00+00:00",
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (directory / ".lock").touch()  # its build's lock file, which stays


def downgrade(source: Path, directory: Path) -> None:
    """The format-1 index an old tusou would have written for what the index at `source` holds."""
    index = read_back(source)
    write_legacy_index(directory, index.manifest.model, index.items, index.embeddings)
