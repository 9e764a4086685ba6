"""An embedding model: a text tower and an image tower that share one vector space.

The image tower is built on first need (`EmbeddingModel.image_built`), so a text-only query
loads only the text tower where the family allows it (retrieval.models.families).
"""

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

from retrieval.models.devices import inference, resolve_device
from retrieval.models.families import family_of
from retrieval.models.registry import DEFAULT_MODEL, ModelEntry, resolve_model
from retrieval.models.towers import ImageEncoder, LazyImageTower, TextEncoder


@dataclass
class EmbeddingModel:
    """Both towers of a registry entry on one device. Whatever needs the image tower (image
    encodings, `preprocess`, `image_size`, `logit_scale`, fingerprints of it, training) builds it
    then, once; until then a text-only use holds the text tower alone."""

    entry: ModelEntry
    text_model: TextEncoder
    lazy_image: LazyImageTower
    device: torch.device
    sources: dict[str, str | None]
    """Where the weights came from (`text_weights`, `image_weights`), for reopening an index."""
    loaded: Fingerprints | None = None
    """The fingerprints of the weights as loaded, kept by a copy cast to another precision (a cast
    changes the values they hash, not which weights they are); None: hash the towers as they are."""
    teacher_image: str | None = None
    """A distilled student's record of its teacher's image-tower fingerprint (its student.json): an
    index of the teacher is checked against it at once, before the image tower is ever built."""

    @property
    def image_model(self) -> ImageEncoder:
        """The image tower, built now if nothing has needed it yet (safe from several threads)."""
        return self.lazy_image.get()

    @property
    def image_built(self) -> bool:
        """Whether the image tower is in memory: False after text-only use of a deferring family."""
        return self.lazy_image.ready

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
        """Vectors of images already run through `preprocess` (a batch tensor), in the image tower's dtype."""
        image = self.image_model
        with inference(self.device):
            return _normalise(image(pixels.to(self.device, next(image.parameters()).dtype)))

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """L2-normalised float32 image vectors, one row per image."""
        rows = [
            self.encode_pixels(torch.stack([self.preprocess(im) for im in images[start : start + batch_size]]))
            for start in range(0, len(images), batch_size)
        ]
        return _stack(rows, self.dim)

    @property
    def dtype(self) -> torch.dtype:
        """The towers' dtype, read from the text tower: reading it must not build the image tower.
        A text tower run outside torch (ONNX Runtime) has no torch weights: float32 in and out."""
        weight = next(self.text_model.parameters(), None)
        return torch.float32 if weight is None else weight.dtype

    def with_dtype(self, dtype: torch.dtype) -> EmbeddingModel:
        """A copy whose towers run in `dtype`; this model is left as it is (one copy of what both
        towers share). An image tower not built yet is built in `dtype` when the copy needs it.
        The copy's fingerprints stay those of the weights as loaded, so an index still knows them.
        A text tower without torch weights (ONNX Runtime's) is left as it is: the cast is the image tower's."""
        if self.dtype == dtype:
            return self
        loaded = self._loaded()
        if self.image_built:
            loaded.note_image(self.image_model)
            text, image = copy.deepcopy((self.text_model, self.image_model))
            lazy = LazyImageTower(tower=image.to(dtype))
        else:
            text, lazy = copy.deepcopy(self.text_model), self.lazy_image.then(lambda image: loaded.note_image(image).to(dtype))
        return dataclasses.replace(self, text_model=text.to(dtype), lazy_image=lazy, loaded=loaded)

    def with_text_tower(self, tower: TextEncoder) -> EmbeddingModel:
        """A copy whose texts go through `tower` (one made from this model's own: ONNX Runtime's
        OnnxText, which checks that itself), with this model's image tower (built for the copy when
        it first needs one). The copy keeps the fingerprints of the weights as loaded, so an index
        still knows them."""
        loaded = self._loaded()
        lazy = LazyImageTower(tower=loaded.note_image(self.image_model)) if self.image_built else self.lazy_image.then(loaded.note_image)
        return dataclasses.replace(self, text_model=tower, lazy_image=lazy, loaded=loaded)

    def _loaded(self) -> Fingerprints:
        """The fingerprints of the weights as loaded, for a copy to keep (the text tower's taken now)."""
        return self.loaded or Fingerprints.of_text(self.entry, self.text_model)

    def fingerprint(self) -> str:
        """A short hash of both towers' weights: names, shapes and a strided sample of values.

        Two models with different weights get different fingerprints in practice, at a cost of
        milliseconds rather than hashing every byte of a ViT-L.
        """
        return self._with_image().both

    def text_fingerprint(self) -> str:
        """The text tower's part of `fingerprint` alone: a text query needs only this tower checked."""
        return self._loaded().text

    def image_fingerprint(self) -> str:
        """The image tower's part alone: what vectors in an index depend on (a student text tower shares it)."""
        return self._with_image().image

    def _with_image(self) -> Fingerprints:
        """The fingerprints, the image tower's taken too (building it: a cast copy's build notes it as loaded)."""
        image = self.image_model
        if self.loaded:
            return self.loaded
        prints = Fingerprints.of_text(self.entry, self.text_model)
        prints.note_image(image)
        return prints


@dataclass
class Fingerprints:
    """A model's fingerprints, taken from its towers' weights as loaded."""

    image_of: str
    """The name of the model whose image tower this is (a student's teacher): what the image fingerprint hashes."""
    after_text: hashlib._Hash
    """The hash of the name and the text tower, which `both` goes on from."""
    image: str = ""
    both: str = ""

    @classmethod
    def of_text(cls, entry: ModelEntry, text: TextEncoder) -> Fingerprints:
        return cls(entry.image_of, _hashed(hashlib.sha256(entry.name.encode()), "text.", text))

    @property
    def text(self) -> str:
        return _hex(self.after_text)

    def note_image(self, image: ImageEncoder) -> ImageEncoder:
        """Take the image tower's fingerprints (before anything casts it); returns the tower."""
        if not self.image:
            self.image = _hex(_hashed(hashlib.sha256(self.image_of.encode()), "image.", image))
            self.both = _hex(_hashed(self.after_text.copy(), "image.", image))
        return image


def _hashed(digest: hashlib._Hash, prefix: str, tower: TextEncoder | ImageEncoder) -> hashlib._Hash:
    """`digest` updated with a tower's weights: names, shapes and a strided sample of values."""
    for key, tensor in sorted(tower.weights().items()):
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 256)].float().cpu().numpy()
        digest.update(f"{prefix}{key}{tuple(tensor.shape)}".encode())
        digest.update(np.round(sample, 5).tobytes())
    return digest


def _hex(digest: hashlib._Hash) -> str:
    return digest.hexdigest()[:16]


def _normalise(features: torch.Tensor) -> np.ndarray:
    features = features.float()
    return torch.nn.functional.normalize(features, dim=-1).cpu().numpy()


def _stack(rows: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)


def student_model(spec: str, device: str | torch.device = "auto") -> EmbeddingModel | None:
    """The model `spec` names, loaded, when it is a student: it queries its teacher's indexes with its
    own text tower. None for any other model, which an index loads itself, with the weights it was built by."""
    return load_model(spec, device=device) if resolve_model(spec).entry.teacher is not None else None


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    device: str | torch.device = "auto",
    pretrained: bool = True,
    text_weights: str | Path | None = None,
    image_weights: str | Path | None = None,
) -> EmbeddingModel:
    """Build a registry entry's text tower (`spec`: its name, or a folder `tusou distill` wrote), and
    its image tower now or on first need (as its family allows); `pretrained=False` keeps the
    architecture with random weights.

    `text_weights` (a transformers directory) and `image_weights` (an open_clip checkpoint)
    load from local paths instead of the entry's default source. A path that is not there fails
    here; a checkpoint that does not load fails when its tower is built.
    """
    model = resolve_model(spec)
    entry, text_weights = model.entry, text_weights or model.text_weights
    resolved = resolve_device(device)
    text_model, image = family_of(entry).load(entry, pretrained, text_weights, image_weights)
    return EmbeddingModel(
        entry=entry,
        text_model=text_model.to(resolved),
        lazy_image=image.then(lambda tower: tower.to(resolved)),
        device=resolved,
        sources={
            "text_weights": str(Path(text_weights).resolve()) if text_weights else None,
            "image_weights": str(Path(image_weights).resolve()) if image_weights else None,
        },
        teacher_image=model.teacher_image,
    )
