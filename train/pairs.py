"""Image–caption pairs from a Chinese-CLIP layout split, batched for contrastive training."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from retrieval.datasets.cnclip_layout import read_captions, read_images, split_paths
from retrieval.errors import TusouError
from retrieval.images import ImageError, open_image


@dataclass
class PairBatch:
    texts: list[str]
    pixels: torch.Tensor
    positives: torch.Tensor
    """positives[i, j]: text i truly describes image j of the batch (its own or another)."""


class PairData:
    """Iterates over captions; each is paired with one of its correct images, chosen by seed."""

    def __init__(self, root: Path, split: str, preprocess: Callable, min_size: int):
        images_path, texts_path = split_paths(root, split)
        self.images = dict(read_images(images_path))
        self.captions = read_captions(texts_path)
        self.preprocess = preprocess
        self.min_size = min_size
        for caption in self.captions:
            missing = [i for i in caption.image_ids if i not in self.images]
            if not caption.image_ids or missing:
                raise TusouError(f"{texts_path}: text {caption.text_id} names images not in {images_path.name}: {missing[:3]}")

    def __len__(self) -> int:
        return len(self.captions)

    def epoch_order(self, seed: int, epoch: int) -> list[tuple[int, int]]:
        """(caption index, image id) pairs in this epoch's shuffled order; the same for the same seed."""
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(self.captions), generator=generator).tolist()
        picks = torch.randint(0, 2**31 - 1, (len(order),), generator=generator).tolist()
        return [(i, self.captions[i].image_ids[pick % len(self.captions[i].image_ids)]) for i, pick in zip(order, picks)]

    def batch(self, pairs: list[tuple[int, int]]) -> PairBatch:
        captions = [self.captions[i] for i, _ in pairs]
        image_ids = [image_id for _, image_id in pairs]
        try:
            pixels = torch.stack([self.preprocess(open_image(self.images[i], self.min_size)) for i in image_ids])
        except ImageError as exc:
            raise TusouError(f"a training image cannot be decoded: {exc}") from None
        described = [set(c.image_ids) for c in captions]
        positives = torch.tensor([[image_id in ids for image_id in image_ids] for ids in described])
        return PairBatch([c.text for c in captions], pixels, positives)
