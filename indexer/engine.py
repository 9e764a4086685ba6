"""Where a build's images become vectors: the engine interface, and the local engine.

A build (indexer.build) chooses its engine once, from its plan: `LocalEngine` decodes in
worker processes and embeds in this one; `indexer.ray_engine.RayEngine` does both on a Ray
cluster. Either stages what it embeds through `stage`, so a killed build of either kind
resumes from the same checkpoints, and the rest of the build does not know which ran.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
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
    ocr: bool = False
    """Read the text in each image embedded, and in the images of the `read_only` units."""
    to_read: dict[str, SourceFile] = field(default_factory=dict)
    """The images read for their text alone (held by the index, unchanged), by path: their stamps."""


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
    read: list[Decoded] = field(default_factory=list)
    """Images read for their text alone."""


Report = Callable[[int, int | None], None]
"""Told (images done, images in all or None when not known yet) as a build embeds."""


class Progress:
    """A build's count of images done: shown by its tqdm bar, and told to a `Report` when one is given."""

    def __init__(self, bar: tqdm, report: Report | None):
        self.bar, self.report, self.done = bar, report, 0

    def update(self, images: int) -> None:
        self.done += images
        self.bar.update(images)
        if self.report is not None:
            self.report(self.done, self.bar.total)

    def set_postfix_str(self, text: str, refresh: bool = False) -> None:
        self.bar.set_postfix_str(text, refresh=refresh)


@contextmanager
def progress(total: int | None, desc: str, show: bool, report: Report | None) -> Iterator[Progress]:
    """The one progress of an embedding run, for the bar (`show`) and the `report` alike."""
    with tqdm(total=total, desc=desc, unit=" img", disable=not show) as bar:
        if report is not None:
            report(0, total)
        yield Progress(bar, report)


def stage(batches: Iterable[Embedded], work: Work, staging: Staging, checkpoint_every: int, bar: Progress) -> list[Skipped]:
    """Stage each batch's vectors and texts, saving a chunk at least every `checkpoint_every` images (the
    most a killed build loses); returns the images that could not be read. The bar counts the text read."""
    skipped: list[Skipped] = []
    since_flush = read = lines = 0
    for batch in batches:
        skipped += [Skipped(item.path, item.error or "unreadable") for item in batch.failed]
        for item, vector in zip(batch.ok, batch.vectors):
            record = item.record(work.files)
            staging.add(record, vector)
            if item.text is not None:
                staging.add_text(record.path, record.stamp, item.text)
        for item in batch.read:
            staging.add_text(item.path, work.to_read[item.path].stamp, item.text)
        texts = [item.text for item in batch.ok + batch.read if item.text is not None]
        read, lines = read + len(texts), lines + sum(len(text.lines) for text in texts)
        since_flush += len(batch.ok) + len(batch.read)
        if since_flush >= checkpoint_every:
            staging.flush()
            since_flush = 0
        if work.ocr:
            bar.set_postfix_str(f"text read in {read} ({lines} lines)", refresh=False)
        bar.update(len(batch.ok) + len(batch.failed) + len(batch.read))
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
    report: Report | None = None

    def session(self) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def embed(self, model: EmbeddingModel, ref: ModelRef, work: Work, staging: Staging) -> list[Skipped]:
        if not work.units:
            return []
        workers = default_workers() if self.workers is None else max(0, self.workers)
        with progress(work.images, progress_label("embedding", work), self.progress, self.report) as bar:
            return stage(self._batches(model, work, workers), work, staging, self.checkpoint_every, bar)

    def _batches(self, model: EmbeddingModel, work: Work, workers: int) -> Iterator[Embedded]:
        for batch in decoded_batches(work.units, model.preprocess, model.image_size, self.batch_size, workers, work.ocr):
            vectors = model.encode_pixels(batch.pixels) if batch.pixels is not None else np.zeros((0, model.dim), np.float32)
            yield Embedded(batch.ok, vectors, batch.failed, batch.read)


def progress_label(embedding: str, work: Work) -> str:
    """What the bar says the build does: embedding, reading text, or both."""
    if not work.ocr:
        return embedding
    return "reading text" if all(unit.read_only for unit in work.units) else f"{embedding} + reading text"
