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
import open_clip
import torch
from PIL import Image
from transformers import BertModel, BertTokenizer

from retrieval import hub
from retrieval.devices import inference, resolve_device
from retrieval.image_tower import hub_checkpoint, load_image_tower
from retrieval.registry import DEFAULT_MODEL, PACKAGE_ASSETS, ModelEntry, get_entry
from retrieval.text_tower import load_text_tower


@dataclass
class EmbeddingModel:
    entry: ModelEntry
    tokenizer: BertTokenizer
    text_model: BertModel
    image_model: open_clip.CLIP
    preprocess: Callable[[Image.Image], torch.Tensor]
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
        size = self.image_model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def logit_scale(self) -> float:
        """exp(learned temperature), ≈100 for CLIP: turns cosines into zero-shot logits."""
        return float(self.image_model.logit_scale.detach().exp().clamp(max=100.0))

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Taiyi-CLIP's way by default: every text padded to 77 tokens, no attention mask."""
        spec = self.entry.text
        encoded = self.tokenizer(
            list(texts),
            padding=True if spec.dynamic_padding else "max_length",
            truncation=True,
            max_length=spec.context_length,
            return_tensors="pt",
        )
        inputs = {"input_ids": encoded["input_ids"].to(self.device)}
        if spec.dynamic_padding:
            inputs["attention_mask"] = encoded["attention_mask"].to(self.device)
        return inputs

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """The tower's raw text vectors (the entry's `feature` output), with autograd if enabled."""
        return getattr(self.text_model(**self.tokenize(texts)), self.entry.text.feature)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """L2-normalised float32 text vectors, one row per text."""
        with inference(self.device):
            rows = [_normalise(self.text_features(texts[s : s + batch_size])) for s in range(0, len(texts), batch_size)]
        return _stack(rows, self.dim)

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Vectors of images already run through `preprocess` (a batch tensor)."""
        with inference(self.device):
            return _normalise(self.image_model.encode_image(pixels.to(self.device, self.dtype)))

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
        """A copy whose towers run in `dtype`; this model is left as it is."""
        if self.dtype == dtype:
            return self
        towers = {name: copy.deepcopy(getattr(self, name)).to(dtype) for name in ("text_model", "image_model")}
        return dataclasses.replace(self, **towers)

    def fingerprint(self) -> str:
        """A short hash of both towers' weights: names, shapes and a strided sample of values.

        Two models with different weights get different fingerprints in practice, at a cost of
        milliseconds rather than hashing every byte of a ViT-L.
        """
        digest = hashlib.sha256(self.name.encode())
        for prefix, module in (("text.", self.text_model), ("image.", self.image_model.visual)):
            for key, tensor in sorted(module.state_dict().items()):
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
    tokenizer, text_model = load_text_tower(entry, pretrained, text_weights)
    image_model, preprocess = load_image_tower(entry, pretrained, image_weights)
    return EmbeddingModel(
        entry=entry,
        tokenizer=tokenizer,
        text_model=text_model.to(resolved),
        image_model=image_model.to(resolved),
        preprocess=preprocess,
        device=resolved,
        sources={
            "text_weights": str(Path(text_weights).resolve()) if text_weights else None,
            "image_weights": str(Path(image_weights).resolve()) if image_weights else None,
        },
    )


def weight_sources(entry: ModelEntry) -> dict[str, object]:
    """Where an entry's weights come from and whether they are on this machine (no network)."""
    present = True
    if entry.text.package_dir:
        text = f"package:{entry.text.package_dir}"
        present &= (PACKAGE_ASSETS / entry.text.package_dir / "config.json").is_file()
    elif entry.text.hub_id:
        text = f"hub:{entry.text.hub_id}"
        present &= hub.cached(entry.text.hub_id, ["config.json"])
    else:
        text = "random (fixed seed)"
    if entry.image.package_file:
        image = f"package:{entry.image.package_file}"
        present &= (PACKAGE_ASSETS / entry.image.package_file).is_file()
    elif entry.image.pretrained:
        repo, names = hub_checkpoint(entry)
        image = f"open_clip:{entry.image.arch}/{entry.image.pretrained} (hub:{repo})"
        present &= hub.cached(repo, names)
    else:
        image = f"open_clip:{entry.image.arch}, random (fixed seed)"
    return {"name": entry.name, "dim": entry.dim, "text": text, "image": image, "present": present}
