"""Embeddings of a build in progress, saved in chunks so a killed build resumes.

Each chunk is written atomically; a chunk counts for an image only while it still has the
stamp (size, mtime, change key) it had when embedded, and only for the model that embedded it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from indexer.sources import SourceFile
from retrieval.atomic import atomic_write, atomic_write_text
from retrieval.faults import kill_point
from retrieval.index_store import ImageRecord


class Staging:
    def __init__(self, directory: Path, model: dict):
        self.directory = directory
        self.model = model
        self.items: dict[str, tuple[ImageRecord, np.ndarray]] = {}
        self.pending: list[tuple[ImageRecord, np.ndarray]] = []
        self._load()

    def _load(self) -> None:
        meta = self.directory / "model.json"
        if meta.is_file() and json.loads(meta.read_text(encoding="utf-8")) == self.model:
            for chunk in sorted(self.directory.glob("chunk-*.npz")):
                with np.load(chunk) as data:
                    records = json.loads(str(data["items"]))
                    for record, vector in zip(records, data["vectors"]):
                        self.items[record["path"]] = (ImageRecord(**record), vector)
        elif self.directory.exists():
            shutil.rmtree(self.directory)

    def get(self, source: SourceFile) -> tuple[ImageRecord, np.ndarray] | None:
        """The staged embedding of `source`, if it was made from the file as it is now."""
        found = self.items.get(source.path)
        if found and found[0].stamp == source.stamp:
            return found
        return None

    def add(self, item: ImageRecord, vector: np.ndarray) -> None:
        self.items[item.path] = (item, vector)
        self.pending.append((item, vector))

    def flush(self) -> None:
        """Write what was added since the last flush as one more chunk."""
        if not self.pending:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        meta = self.directory / "model.json"
        if not meta.is_file():
            atomic_write_text(meta, json.dumps(self.model))
        number = len(list(self.directory.glob("chunk-*.npz"))) + 1
        records = json.dumps([asdict(item) for item, _ in self.pending])
        vectors = np.stack([vector for _, vector in self.pending]).astype(np.float16)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, items=np.array(records), vectors=vectors)

        atomic_write(self.directory / f"chunk-{number:06d}.npz", write)
        self.pending = []
        kill_point("staged")

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
