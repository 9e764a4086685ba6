"""Where a build's images become vectors: the engine interface, and the local engine.

A build (indexer.build) chooses its engine once, from its plan: `LocalEngine` decodes in
worker processes and embeds in this one; `indexer.ray_engine.RayEngine` does both on a Ray
cluster. Either stages what it embeds through `stage`, so a killed build of either kind
resumes from the same checkpoints, and the rest of the build does not know which ran.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from tqdm import tqdm

from indexer.decode import Decoded, Unit, decoded_batches
from indexer.sources import Skipped, SourceFile
from indexer.staging import Staging
from retrieval.models.model import EmbeddingModel
from retrieval.store.faults import kill_point
from retrieval.store.model_ref import ModelRef


@dataclass(frozen=True)
class Work:
    """What a build has left to embed."""

    units: list[Unit]
    images: int | None
    """How many images the units hold; None: not known before their tar shards are read."""
    files: dict[str, SourceFile]
    """The scan's files, from which each embedded image's catalog record is made."""


class Engine(Protocol):
    def session(self) -> AbstractContextManager[None]:
        """Held for the whole build from before the scan (the Ray engine joins its cluster: a wrong
        address fails at once, not after the scan)."""
        ...

    def embed(self, model: EmbeddingModel, ref: ModelRef, work: Work, staging: Staging) -> list[Skipped]:
        """Embed `work` with `model` (as `ref` recorded it before its precision cast) into `staging`;
        returns the images that could not be read."""
        ...


@dataclass(frozen=True)
class Embedded:
    """One batch back from an engine."""

    ok: list[Decoded]
    vectors: np.ndarray
    """One row per image of `ok`."""
    failed: list[Decoded]


def stage(batches: Iterable[Embedded], work: Work, staging: Staging, checkpoint_every: int, bar: tqdm) -> list[Skipped]:
    """Stage each batch's vectors, saving a chunk at least every `checkpoint_every` images (the most a
    killed build loses); returns the images that could not be read."""
    skipped: list[Skipped] = []
    since_flush = 0
    for batch in batches:
        skipped += [Skipped(item.path, item.error or "unreadable") for item in batch.failed]
        for item, vector in zip(batch.ok, batch.vectors):
            staging.add(item.record(work.files), vector)
        since_flush += len(batch.ok)
        if since_flush >= checkpoint_every:
            staging.flush()
            since_flush = 0
        bar.update(len(batch.ok) + len(batch.failed))
        kill_point("embedded")
    return skipped


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class LocalEngine:
    """Decoding in `workers` processes (None: default_workers(); 0: in this one), embedding here."""

    batch_size: int = 32
    workers: int | None = None
    checkpoint_every: int = 1024
    progress: bool = True

    def session(self) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def embed(self, model: EmbeddingModel, ref: ModelRef, work: Work, staging: Staging) -> list[Skipped]:
        if not work.units:
            return []
        workers = default_workers() if self.workers is None else max(0, self.workers)
        with tqdm(total=work.images, desc="embedding", unit=" img", disable=not self.progress) as bar:
            return stage(self._batches(model, work.units, workers), work, staging, self.checkpoint_every, bar)

    def _batches(self, model: EmbeddingModel, units: list[Unit], workers: int) -> Iterator[Embedded]:
        for batch in decoded_batches(units, model.preprocess, model.image_size, self.batch_size, workers):
            vectors = model.encode_pixels(batch.pixels) if batch.pixels is not None else np.zeros((0, model.dim), np.float32)
            yield Embedded(batch.ok, vectors, batch.failed)
