"""Reading, hashing, decoding and preprocessing images in worker processes.

A torch DataLoader runs `DecodedImages` in `workers` processes and keeps batches
prefetched, so decoding overlaps with the model embedding the previous batch. The work is
split into units: one per file or URL, one per tar shard (its wanted members read in one
pass by one worker, since finding a member means walking the shard).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from indexer.metadata import ImageMetadata, read_metadata
from indexer.shards import member_path, read_images
from indexer.sources import SourceFile
from retrieval.images import ImageError, decode
from retrieval.locations import MEMBER_SEPARATOR, Unreadable, read_bytes, read_members
from retrieval.store.index_store import ImageRecord


@dataclass
class Decoded:
    path: str
    sha256: str = ""
    width: int = 0
    height: int = 0
    error: str | None = None
    size: int = 0
    mtime_ns: int = 0
    """Of a member of a shard listed as it was read: its stamp, from the tar header."""
    metadata: ImageMetadata = ImageMetadata()
    """What the image says about itself (EXIF), read from the same open as its pixels."""

    def record(self, files: dict[str, SourceFile]) -> ImageRecord:
        """What the catalog keeps of a decoded image: its content from here, its stamp from the scan
        (for a member of a shard listed as it was read: from its tar header and its shard's key)."""
        source = files.get(self.path)
        if source is None:
            shard = files[self.path.rpartition(MEMBER_SEPARATOR)[0]]
            source = SourceFile(self.path, self.size, self.mtime_ns, shard.change_key, shard.path)
        return ImageRecord(
            self.path, source.size, source.mtime_ns, self.sha256, self.width, self.height,
            change_key=source.change_key, **asdict(self.metadata),
        )


@dataclass
class Batch:
    pixels: torch.Tensor | None
    """Preprocessed images of `ok`, stacked; None when no image in the batch decoded."""
    ok: list[Decoded]
    failed: list[Decoded]


@dataclass(frozen=True)
class Unit:
    """What one worker reads in one go: a file or URL (`members` None), a shard's wanted members,
    or (`whole`) every image member of a shard not listed yet but those in `skip` (staged already)."""

    location: str
    members: tuple[str, ...] | None = None
    whole: bool = False
    skip: tuple[str, ...] = ()


def units_of(sources: list[SourceFile], skip: dict[str, tuple[str, ...]] | None = None) -> list[Unit]:
    """Sources grouped by what must be read together, in the order they first appear; `skip`: the
    members of each whole shard an interrupted build staged already."""
    shards: dict[str, list[str]] = {}
    units: list[Unit | str] = []
    for source in sources:
        if source.shard is None or source.whole:
            units.append(Unit(source.path, whole=source.whole, skip=(skip or {}).get(source.path, ())))
            continue
        if source.shard not in shards:
            shards[source.shard] = []
            units.append(source.shard)
        shards[source.shard].append(source.path[len(source.shard) + len(MEMBER_SEPARATOR) :])
    return [Unit(unit, tuple(shards[unit])) if isinstance(unit, str) else unit for unit in units]


def decode_unit(unit: Unit, preprocess: Callable, min_size: int) -> Iterator[tuple[Decoded, torch.Tensor | None]]:
    """Each image of `unit`, decoded and preprocessed (None and the reason when it cannot be)."""
    if unit.whole:
        for member, size, mtime_ns, data, error in read_images(unit.location, frozenset(unit.skip)):
            if data is None:
                yield Decoded(member_path(unit.location, member) if member else unit.location, error=error), None
                continue
            item, pixels = _decoded(member_path(unit.location, member), data, preprocess, min_size)
            yield replace(item, size=size, mtime_ns=mtime_ns), pixels
        return
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
    """An image's record and pixels; its metadata is read once, as it is opened, before any transposition."""
    metadata: list[ImageMetadata] = []
    try:
        image, (width, height) = decode(data, min_size, opened=lambda opened: metadata.append(read_metadata(opened)))
        pixels = preprocess(image)
    except ImageError as exc:
        return Decoded(path, error=str(exc)), None
    return Decoded(path, hashlib.sha256(data).hexdigest(), width, height, metadata=metadata[0]), pixels


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
    units: list[Unit], preprocess: Callable, min_size: int, batch_size: int, workers: int
) -> Iterator[Batch]:
    workers = min(workers, len(units))  # a worker with no unit would only cost a process
    loader = DataLoader(
        DecodedImages(units, preprocess, min_size),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        prefetch_factor=2 if workers else None,
    )
    yield from loader
