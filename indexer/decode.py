"""Reading, hashing, decoding and preprocessing images in worker processes.

A torch DataLoader runs `DecodedImages` in `workers` processes and keeps batches
prefetched, so decoding overlaps with the model embedding the previous batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from retrieval.images import ImageError, decode, file_error_reason


@dataclass
class Decoded:
    path: str
    sha256: str = ""
    width: int = 0
    height: int = 0
    error: str | None = None


@dataclass
class Batch:
    pixels: torch.Tensor | None
    """Preprocessed images of `ok`, stacked; None when no image in the batch decoded."""
    ok: list[Decoded]
    failed: list[Decoded]


class DecodedImages(Dataset):
    def __init__(self, paths: list[str], preprocess: Callable, min_size: int):
        self.paths = paths
        self.preprocess = preprocess
        self.min_size = min_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> tuple[Decoded, torch.Tensor | None]:
        path = self.paths[row]
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            return Decoded(path, error=file_error_reason(exc)), None
        try:
            image, (width, height) = decode(data, self.min_size)
            pixels = self.preprocess(image)
        except ImageError as exc:
            return Decoded(path, error=str(exc)), None
        return Decoded(path, hashlib.sha256(data).hexdigest(), width, height), pixels


def _collate(samples: list[tuple[Decoded, torch.Tensor | None]]) -> Batch:
    ok = [(item, pixels) for item, pixels in samples if pixels is not None]
    return Batch(
        pixels=torch.stack([pixels for _, pixels in ok]) if ok else None,
        ok=[item for item, _ in ok],
        failed=[item for item, pixels in samples if pixels is None],
    )


def decoded_batches(
    paths: list[str], preprocess: Callable, min_size: int, batch_size: int, workers: int
) -> Iterator[Batch]:
    loader = DataLoader(
        DecodedImages(paths, preprocess, min_size),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        prefetch_factor=2 if workers else None,
    )
    yield from loader
