"""Reading, hashing, decoding and preprocessing images in worker processes.

A torch DataLoader runs `DecodedImages` in `workers` processes and keeps batches
prefetched, so decoding overlaps with the model embedding the previous batch. The work is
split into units: one per file or URL, one per tar shard (its wanted members read in one
pass by one worker, since finding a member means walking the shard).

A build that reads text (`tusou index --ocr`) has the same workers read it: an image is decoded
once, large enough for the OCR's detector (retrieval.ocr.engine.MAX_SIDE on its longer side, a
JPEG at a reduced scale), and both the model's pixels and the lines come from it. An image the
index holds already, unchanged, is read for its text alone (a `read_only` unit): no pixels.
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
from retrieval.ocr.engine import MAX_SIDE, OcrResult, read_decoded
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
    text: OcrResult | None = None
    """The lines read in it; None: not read (a build without OCR, or an image that did not decode)."""
    read_only: bool = False
    """Read for its text alone: the index holds the image, unchanged, embedded already."""

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
    read: list[Decoded]
    """Images read for their text alone (a reason in their text when they could not be)."""


@dataclass(frozen=True)
class Unit:
    """What one worker reads in one go: a file or URL (`members` None), a shard's wanted members,
    or (`whole`) every image member of a shard not listed yet but those in `skip` (staged already)."""

    location: str
    members: tuple[str, ...] | None = None
    whole: bool = False
    skip: tuple[str, ...] = ()
    read_only: bool = False
    """Its images are read for their text alone (see the module's docstring)."""


def units_of(sources: list[SourceFile], skip: dict[str, tuple[str, ...]] | None = None, read_only: bool = False) -> list[Unit]:
    """Sources grouped by what must be read together, in the order they first appear; `skip`: the
    members of each whole shard an interrupted build staged already."""
    shards: dict[str, list[str]] = {}
    units: list[Unit | str] = []
    for source in sources:
        if source.shard is None or source.whole:
            units.append(Unit(source.path, whole=source.whole, skip=(skip or {}).get(source.path, ()), read_only=read_only))
            continue
        if source.shard not in shards:
            shards[source.shard] = []
            units.append(source.shard)
        shards[source.shard].append(source.path[len(source.shard) + len(MEMBER_SEPARATOR) :])
    return [Unit(unit, tuple(shards[unit]), read_only=read_only) if isinstance(unit, str) else unit for unit in units]


def decode_unit(unit: Unit, preprocess: Callable, min_size: int, ocr: int | None = None) -> Iterator[tuple[Decoded, torch.Tensor | None]]:
    """Each image of `unit`, decoded and preprocessed (None and the reason when it cannot be), its
    text read when `ocr` is not None (onnxruntime's threads; 0: every core). Of a `read_only` unit,
    no pixels, and the reason an image could not be read is its text's."""
    if not unit.read_only:
        yield from _decode_unit(unit, preprocess, min_size, ocr)
        return
    for item, _ in _decode_unit(unit, None, min_size, ocr):
        yield replace(item, read_only=True, error=None, text=item.text or OcrResult(reason=item.error)), None


def _decode_unit(unit: Unit, preprocess: Callable | None, min_size: int, ocr: int | None) -> Iterator[tuple[Decoded, torch.Tensor | None]]:
    if unit.whole:
        for member, size, mtime_ns, data, error in read_images(unit.location, frozenset(unit.skip)):
            if data is None:
                yield Decoded(member_path(unit.location, member) if member else unit.location, error=error), None
                continue
            item, pixels = _decoded(member_path(unit.location, member), data, preprocess, min_size, ocr)
            yield replace(item, size=size, mtime_ns=mtime_ns), pixels
        return
    if unit.members is None:
        try:
            data = read_bytes(unit.location)
        except Unreadable as exc:
            yield Decoded(unit.location, error=str(exc)), None
            return
        yield _decoded(unit.location, data, preprocess, min_size, ocr)
        return
    for member, data, error in read_members(unit.location, list(unit.members)):
        path = member_path(unit.location, member)
        yield (Decoded(path, error=error), None) if data is None else _decoded(path, data, preprocess, min_size, ocr)


def _decoded(path: str, data: bytes, preprocess: Callable | None, min_size: int, ocr: int | None) -> tuple[Decoded, torch.Tensor | None]:
    """An image's record, pixels (none without `preprocess`) and text (read unless `ocr` is None); its
    metadata is read once, as it is opened, before any transposition."""
    metadata: list[ImageMetadata] = []
    try:
        image, size = decode(
            data, min_size if preprocess else None, opened=lambda opened: metadata.append(read_metadata(opened)),
            longest=None if ocr is None else MAX_SIDE,
        )
        pixels = preprocess(image) if preprocess else None
    except ImageError as exc:
        return Decoded(path, error=str(exc)), None
    text = None if ocr is None else read_decoded(image, size, threads=ocr)
    return Decoded(path, hashlib.sha256(data).hexdigest(), *size, metadata=metadata[0], text=text), pixels


class DecodedImages(IterableDataset):
    def __init__(self, units: list[Unit], preprocess: Callable, min_size: int, ocr: int | None):
        self.units = units
        self.preprocess = preprocess
        self.min_size = min_size
        self.ocr = ocr

    def __iter__(self) -> Iterator[tuple[Decoded, torch.Tensor | None]]:
        worker = get_worker_info()
        for unit in self.units[worker.id :: worker.num_workers] if worker else self.units:
            yield from decode_unit(unit, self.preprocess, self.min_size, self.ocr)


def _collate(samples: list[tuple[Decoded, torch.Tensor | None]]) -> Batch:
    ok = [(item, pixels) for item, pixels in samples if pixels is not None]
    return Batch(
        pixels=torch.stack([pixels for _, pixels in ok]) if ok else None,
        ok=[item for item, _ in ok],
        failed=[item for item, pixels in samples if pixels is None and not item.read_only],
        read=[item for item, _ in samples if item.read_only],
    )


def decoded_batches(
    units: list[Unit], preprocess: Callable, min_size: int, batch_size: int, workers: int, ocr: bool = False
) -> Iterator[Batch]:
    """Batches of `units` decoded in `workers` processes, their text read too when `ocr` (each worker
    an onnxruntime thread of its own; decoding in this process, every core)."""
    workers = min(workers, len(units))  # a worker with no unit would only cost a process
    loader = DataLoader(
        DecodedImages(units, preprocess, min_size, (1 if workers else 0) if ocr else None),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        prefetch_factor=2 if workers else None,
    )
    yield from loader
