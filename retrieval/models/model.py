"""An embedding model: a text tower and an image tower that share one vector space."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from retrieval.models import hub
from retrieval.models.chinese_clip import load_chinese_clip
from retrieval.models.devices import inference, resolve_device
from retrieval.models.image_tower import hub_checkpoint, load_image_tower
from retrieval.models.open_clip_hf import load_open_clip_hf
from retrieval.models.registry import (
    DEFAULT_MODEL,
    PACKAGE_ASSETS,
    ChineseClip,
    ImageSpec,
    ImageTower,
    ModelEntry,
    OpenClip,
    TextSpec,
    TextTower,
    get_entry,
)
from retrieval.models.text_tower import load_text_tower
from retrieval.models.towers import ImageEncoder, TextEncoder


@dataclass
class EmbeddingModel:
    entry: ModelEntry
    text_model: TextEncoder
    image_model: ImageEncoder
    device: torch.device
    sources: dict[str, str | None]
    """Where the weights came from (`text_weights`, `image_weights`), for reopening an index."""

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def dim(self) -> int:
        return self.entry.dim

    @property
    def image_size(self) -> int:
        return self.image_model.image_size

    @property
    def preprocess(self) -> Callable[[Image.Image], torch.Tensor]:
        return self.image_model.preprocess

    @property
    def logit_scale(self) -> float:
        return self.image_model.logit_scale

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return {key: value.to(self.device) for key, value in self.text_model.tokenize(texts).items()}

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """The tower's raw text vectors, with autograd if enabled."""
        return self.text_model(**self.tokenize(texts))

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """L2-normalised float32 text vectors, one row per text."""
        with inference(self.device):
            rows = [_normalise(self.text_features(texts[s : s + batch_size])) for s in range(0, len(texts), batch_size)]
        return _stack(rows, self.dim)

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Vectors of images already run through `preprocess` (a batch tensor)."""
        with inference(self.device):
            return _normalise(self.image_model(pixels.to(self.device, self.dtype)))

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """L2-normalised float32 image vectors, one row per image."""
        rows = [
            self.encode_pixels(torch.stack([self.preprocess(im) for im in images[start : start + batch_size]]))
            for start in range(0, len(images), batch_size)
        ]
        return _stack(rows, self.dim)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.image_model.parameters()).dtype

    def with_dtype(self, dtype: torch.dtype) -> EmbeddingModel:
        """A copy whose towers run in `dtype`; this model is left as it is (one copy of what both towers share)."""
        if self.dtype == dtype:
            return self
        text, image = copy.deepcopy((self.text_model, self.image_model))
        return dataclasses.replace(self, text_model=text.to(dtype), image_model=image.to(dtype))

    def fingerprint(self) -> str:
        """A short hash of both towers' weights: names, shapes and a strided sample of values.

        Two models with different weights get different fingerprints in practice, at a cost of
        milliseconds rather than hashing every byte of a ViT-L.
        """
        return _fingerprint(self.name, ("text.", self.text_model), ("image.", self.image_model))

    def text_fingerprint(self) -> str:
        """The text tower's part of `fingerprint` alone: a text query needs only this tower checked."""
        return _fingerprint(self.name, ("text.", self.text_model))

    def image_fingerprint(self) -> str:
        """The image tower's part alone: what vectors in an index depend on (a student text tower shares it)."""
        return _fingerprint(self.name, ("image.", self.image_model))


def _fingerprint(name: str, *towers: tuple[str, TextEncoder | ImageEncoder]) -> str:
    digest = hashlib.sha256(name.encode())
    for prefix, tower in towers:
        for key, tensor in sorted(tower.weights().items()):
            flat = tensor.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 256)].float().cpu().numpy()
            digest.update(f"{prefix}{key}{tuple(tensor.shape)}".encode())
            digest.update(np.round(sample, 5).tobytes())
    return digest.hexdigest()[:16]


def _normalise(features: torch.Tensor) -> np.ndarray:
    features = features.float()
    return torch.nn.functional.normalize(features, dim=-1).cpu().numpy()


def _stack(rows: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)


Loader = Callable[[ModelEntry, bool, "str | Path | None", "str | Path | None"], tuple[TextEncoder, ImageEncoder]]


def _bert_and_open_clip(
    entry: ModelEntry, pretrained: bool, text_weights: str | Path | None, image_weights: str | Path | None
) -> tuple[TextEncoder, ImageEncoder]:
    return load_text_tower(entry, pretrained, text_weights), load_image_tower(entry, pretrained, image_weights)


FAMILIES: dict[type, Loader] = {TextTower: _bert_and_open_clip, ChineseClip: load_chinese_clip, OpenClip: load_open_clip_hf}
"""Each family's loader, by the type of an entry's text spec."""


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    device: str | torch.device = "auto",
    pretrained: bool = True,
    text_weights: str | Path | None = None,
    image_weights: str | Path | None = None,
) -> EmbeddingModel:
    """Build a registry entry's towers; `pretrained=False` keeps the architecture with random weights.

    `text_weights` (a transformers directory) and `image_weights` (an open_clip checkpoint)
    load from local paths instead of the entry's default source.
    """
    entry = get_entry(name)
    resolved = resolve_device(device)
    text_model, image_model = FAMILIES[type(entry.text)](entry, pretrained, text_weights, image_weights)
    return EmbeddingModel(
        entry=entry,
        text_model=text_model.to(resolved),
        image_model=image_model.to(resolved),
        device=resolved,
        sources={
            "text_weights": str(Path(text_weights).resolve()) if text_weights else None,
            "image_weights": str(Path(image_weights).resolve()) if image_weights else None,
        },
    )


def _text_source(spec: TextSpec) -> tuple[str, bool]:
    if isinstance(spec, ChineseClip):
        return f"hub:{spec.hub_id}", hub.cached(spec.hub_id, ["config.json"])
    if isinstance(spec, OpenClip):
        return f"hub:{spec.text_hub_id} (config, tokenizer)", hub.cached(spec.text_hub_id, ["config.json"])
    if spec.package_dir:
        return f"package:{spec.package_dir}", (PACKAGE_ASSETS / spec.package_dir / "config.json").is_file()
    if spec.hub_id:
        return f"hub:{spec.hub_id}", hub.cached(spec.hub_id, ["config.json"])
    return "random (fixed seed)", True


def _image_source(spec: ImageSpec) -> tuple[str, bool]:
    if isinstance(spec, ChineseClip):
        return f"hub:{spec.hub_id}", hub.cached(spec.hub_id, ["config.json"])
    if isinstance(spec, ImageTower) and spec.package_file:
        return f"package:{spec.package_file}", (PACKAGE_ASSETS / spec.package_file).is_file()
    if spec.pretrained:
        repo, names = hub_checkpoint(spec.arch, spec.pretrained)
        return f"open_clip:{spec.arch}/{spec.pretrained} (hub:{repo})", hub.cached(repo, names)
    return f"open_clip:{spec.arch}, random (fixed seed)", True


def weight_sources(entry: ModelEntry) -> dict[str, object]:
    """Where an entry's weights come from and whether they are on this machine (no network)."""
    (text, text_here), (image, image_here) = _text_source(entry.text), _image_source(entry.image)
    return {"name": entry.name, "dim": entry.dim, "text": text, "image": image, "present": text_here and image_here}
