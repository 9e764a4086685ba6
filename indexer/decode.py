"""Reading, hashing, decoding and preprocessing images in worker processes.

A torch DataLoader runs `DecodedImages` in `workers` processes and keeps batches
prefetched, so decoding overlaps with the model embedding the previous batch. The work is
split into units: one per file or URL, one per tar shard (its wanted members read in one
pass by one worker, since finding a member means walking the shard).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from indexer.sources import SourceFile
from retrieval.images import ImageError, decode
from retrieval.index_store import ImageRecord
from retrieval.locations import MEMBER_SEPARATOR, Unreadable, member_path, read_bytes, read_members


@dataclass
class Decoded:
    path: str
    sha256: str = ""
    width: int = 0
    height: int = 0
    error: str | None = None

    def record(self, source: SourceFile) -> ImageRecord:
        """What the catalog keeps of a decoded image: its content from here, its stamp from the scan."""
        return ImageRecord(
            self.path, source.size, source.mtime_ns, self.sha256, self.width, self.height, change_key=source.change_key
        )


@dataclass
class Batch:
    pixels: torch.Tensor | None
    """Preprocessed images of `ok`, stacked; None when no image in the batch decoded."""
    ok: list[Decoded]
    failed: list[Decoded]


@dataclass(frozen=True)
class Unit:
    """What one worker reads in one go: a file or URL (`members` None), or a shard's wanted members."""

    location: str
    members: tuple[str, ...] | None = None


def units_of(sources: list[SourceFile]) -> list[Unit]:
    """Sources grouped by what must be read together, in the order they first appear."""
    shards: dict[str, list[str]] = {}
    units: list[Unit | str] = []
    for source in sources:
        if source.shard is None:
            units.append(Unit(source.path))
            continue
        if source.shard not in shards:
            shards[source.shard] = []
            units.append(source.shard)
        shards[source.shard].append(source.path[len(source.shard) + len(MEMBER_SEPARATOR) :])
    return [Unit(unit, tuple(shards[unit])) if isinstance(unit, str) else unit for unit in units]


def decode_unit(unit: Unit, preprocess: Callable, min_size: int) -> Iterator[tuple[Decoded, torch.Tensor | None]]:
    """Each image of `unit`, decoded and preprocessed (None and the reason when it cannot be)."""
    if unit.members is None:
        try:
            data = read_bytes(unit.location)
        except Unreadable as exc:
            yield Decoded(unit.location, error=str(exc)), None
            return
        yield _decoded(unit.location, data, preprocess, min_size)
        return
    for member, data, error in read_members(unit.location, list(unit.members)):
        path = member_path(unit.location, member)
        yield (Decoded(path, error=error), None) if data is None else _decoded(path, data, preprocess, min_size)


def _decoded(path: str, data: bytes, preprocess: Callable, min_size: int) -> tuple[Decoded, torch.Tensor | None]:
    try:
        image, (width, height) = decode(data, min_size)
        pixels = preprocess(image)
    except ImageError as exc:
        return Decoded(path, error=str(exc)), None
    return Decoded(path, hashlib.sha256(data).hexdigest(), width, height), pixels


class DecodedImages(IterableDataset):
    def __init__(self, units: list[Unit], preprocess: Callable, min_size: int):
        self.units = units
        self.preprocess = preprocess
        self.min_size = min_size

    def __iter__(self) -> Iterator[tuple[Decoded, torch.Tensor | None]]:
        worker = get_worker_info()
        for unit in self.units[worker.id :: worker.num_workers] if worker else self.units:
            yield from decode_unit(unit, self.preprocess, self.min_size)


def _collate(samples: list[tuple[Decoded, torch.Tensor | None]]) -> Batch:
    ok = [(item, pixels) for item, pixels in samples if pixels is not None]
    return Batch(
        pixels=torch.stack([pixels for _, pixels in ok]) if ok else None,
        ok=[item for item, _ in ok],
        failed=[item for item, pixels in samples if pixels is None],
    )


def decoded_batches(
    sources: list[SourceFile], preprocess: Callable, min_size: int, batch_size: int, workers: int
) -> Iterator[Batch]:
    units = units_of(sources)
    workers = min(workers, len(units))  # a worker with no unit would only cost a process
    loader = DataLoader(
        DecodedImages(units, preprocess, min_size),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        prefetch_factor=2 if workers else None,
    )
    yield from loader
