"""What every model family provides: a text encoder and an image encoder, both torch modules.

The rest of tusou (encoding, indexes, training, the UI) sees only these interfaces, so a
family is added by writing its loader and its record (retrieval.models.families), not by
branching elsewhere.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence

import torch
from PIL import Image



class TextEncoder(torch.nn.Module):
    """Texts to vectors: `tokenize` gives the inputs that `forward` turns into raw text features."""

    context_length: int

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def weights(self) -> dict[str, torch.Tensor]:
        """The tensors that define this tower (for fingerprints), under stable names."""
        raise NotImplementedError

    @property
    def runs_in(self) -> str:
        """What its queries run in, as the server shows it: the torch dtype (`float32`, `bfloat16`)."""
        return str(next(self.parameters()).dtype).removeprefix("torch.")


class ImageEncoder(torch.nn.Module):
    """Preprocessed pixel batches to raw image features; `preprocess` makes one image a tensor."""

    preprocess: Callable[[Image.Image], torch.Tensor]

    @property
    def image_size(self) -> int:
        raise NotImplementedError

    @property
    def logit_scale(self) -> float:
        """exp(learned temperature), ≈100 for CLIP: turns cosines into zero-shot logits."""
        raise NotImplementedError

    def weights(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class LazyImageTower:
    """An image tower built on first need, once, whichever thread asks first.

    A text-only query never needs the image tower, which is most of a CLIP pair's weights
    (Taiyi-CLIP L/14: 304M of 406M parameters), so it is not built until something asks for it.
    A failed build raises each time the tower is asked for, and builds nothing half-way.
    """

    def __init__(self, build: Callable[[], ImageEncoder] | None = None, tower: ImageEncoder | None = None):
        if (build is None) == (tower is None):
            raise ValueError("a lazy image tower takes either a build or a tower")
        self._build, self._tower = build, tower
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self._tower is not None

    def get(self) -> ImageEncoder:
        if self._tower is None:
            with self._lock:
                if self._tower is None:
                    self._tower = self._build()
        return self._tower

    def then(self, step: Callable[[ImageEncoder], ImageEncoder]) -> LazyImageTower:
        """A lazy tower of its own: built as this one is, then passed through `step`; this one is
        left as it is. A tower given already built (one checkpoint with its text tower) has no
        build of its own: `step` is applied to it now."""
        if self._build is None:
            return LazyImageTower(tower=step(self._tower))
        build = self._build
        return LazyImageTower(lambda: step(build()))


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Random weights drawn from `seed` without touching the caller's random state: random builds
    are reproducible, and building one does not change what the caller draws next."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def state_part(module: torch.nn.Module, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The entries of `module`'s state dict under `prefixes`: one tower's side of a shared model."""
    return {key: value for key, value in module.state_dict().items() if key.startswith(prefixes)}


def temperature(logit_scale: torch.Tensor) -> float:
    """A CLIP model's learned log-scale as the factor on cosines, capped at 100 as CLIP trains it."""
    return float(logit_scale.detach().exp().clamp(max=100.0))


def bert_inputs(tokenizer: Callable, texts: Sequence[str], context_length: int, longest: bool, mask: bool) -> dict[str, torch.Tensor]:
    """A BERT tokenizer's ids for `texts`, padded to the longest text or to `context_length`,
    with the attention mask when `mask`."""
    encoded = tokenizer(list(texts), padding=True if longest else "max_length", truncation=True,
                        max_length=context_length, return_tensors="pt")
    inputs = {"input_ids": encoded["input_ids"]}
    if mask:
        inputs["attention_mask"] = encoded["attention_mask"]
    return inputs
