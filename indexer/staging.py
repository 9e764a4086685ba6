"""Embeddings of a build in progress, saved in chunks so a killed build resumes.

Each chunk is written atomically; a chunk counts for an image only while it still has the
stamp (size, mtime, change key) it had when embedded, and only for the model that embedded it.
Only the records are kept in memory: the vectors stay in their chunk files until the commit
copies them into the new generation, one chunk at a time, so staging a hundred million
images costs the catalog's memory, not the vectors'.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np

from indexer.sources import SourceFile
from retrieval.store.atomic import atomic_write, atomic_write_text
from retrieval.store.faults import kill_point
from retrieval.store.index_store import ImageRecord
from retrieval.store.model_ref import ModelRef


class Staging:
    def __init__(self, directory: Path, model: ModelRef):
        self.directory = directory
        self.model = model.to_dict()
        """The model entry of the index being built: chunks of another model's are not this build's."""
        self.items: dict[str, tuple[ImageRecord, str, int]] = {}
        """Catalog path → (record, chunk file name, row in the chunk); a later chunk wins."""
        self.pending: list[tuple[ImageRecord, np.ndarray]] = []
        self.added = 0
        """Vectors added by this build (the rest were staged by an interrupted one)."""
        self._load()

    def _load(self) -> None:
        meta = self.directory / "model.json"
        if meta.is_file() and json.loads(meta.read_text(encoding="utf-8")) == self.model:
            for chunk in sorted(self.directory.glob("chunk-*.npz")):
                with np.load(chunk) as data:  # reads the records member only
                    records = json.loads(str(data["items"]))
                for row, record in enumerate(records):
                    self.items[record["path"]] = (ImageRecord(**record), chunk.name, row)
        elif self.directory.exists():
            shutil.rmtree(self.directory)

    def get(self, source: SourceFile) -> ImageRecord | None:
        """The staged record of `source`, if it was embedded from the file as it is now."""
        found = self.items.get(source.path)
        if found and found[0].stamp == source.stamp:
            return found[0]
        return None

    def add(self, item: ImageRecord, vector: np.ndarray) -> None:
        """Keep a vector until the next flush; it counts as staged from then on."""
        self.pending.append((item, vector))
        self.added += 1

    def records(self) -> Iterator[ImageRecord]:
        return (record for record, _, _ in self.items.values())

    def flush(self) -> None:
        """Write what was added since the last flush as one more chunk."""
        if not self.pending:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        meta = self.directory / "model.json"
        if not meta.is_file():
            atomic_write_text(meta, json.dumps(self.model))
        name = f"chunk-{len(list(self.directory.glob('chunk-*.npz'))) + 1:06d}.npz"
        records = json.dumps([asdict(item) for item, _ in self.pending])
        vectors = np.stack([vector for _, vector in self.pending]).astype(np.float16)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, items=np.array(records), vectors=vectors)

        atomic_write(self.directory / name, write)
        for row, (item, _) in enumerate(self.pending):
            self.items[item.path] = (item, name, row)
        self.pending = []
        kill_point("staged")

    def copy_vectors(self, rows: dict[str, int], out: np.ndarray) -> None:
        """out[rows[path]] = the staged vector of path, for every path in `rows`, reading each chunk once."""
        by_chunk: dict[str, tuple[list[int], list[int]]] = {}
        for path, destination in rows.items():
            _, chunk, row = self.items[path]
            sources, destinations = by_chunk.setdefault(chunk, ([], []))
            sources.append(row)
            destinations.append(destination)
        for chunk, (sources, destinations) in sorted(by_chunk.items()):
            with np.load(self.directory / chunk) as data:
                out[destinations] = data["vectors"][sources]

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
