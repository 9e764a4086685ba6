"""What every model family provides: a text encoder and an image encoder, both torch modules.

The rest of tusou (encoding, indexes, training, the UI) sees only these two interfaces, so a
family is added by writing its loader, not by branching elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


def bert_inputs(tokenizer: Callable, texts: Sequence[str], context_length: int, longest: bool, mask: bool) -> dict[str, torch.Tensor]:
    """A BERT tokenizer's ids for `texts`, padded to the longest text or to `context_length`,
    with the attention mask when `mask`."""
    encoded = tokenizer(list(texts), padding=True if longest else "max_length", truncation=True,
                        max_length=context_length, return_tensors="pt")
    inputs = {"input_ids": encoded["input_ids"]}
    if mask:
        inputs["attention_mask"] = encoded["attention_mask"]
    return inputs
