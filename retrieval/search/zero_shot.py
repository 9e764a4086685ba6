"""Zero-shot labelling: which of a list of Chinese labels fits an image best.

Each label is embedded through several prompt templates and the normalised mean is its
class vector (CLIP's prompt ensembling); cosines times the model's logit scale, through
a softmax, give probabilities.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from retrieval.errors import TusouError
from retrieval.images import load_query_image

if TYPE_CHECKING:
    from retrieval.models.model import EmbeddingModel

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "一张{}的照片。",
    "一张{}的图片。",
    "{}的照片。",
    "这是{}。",
    "图中是{}。",
)


@dataclass(frozen=True)
class LabelScore:
    label: str
    probability: float

    def to_dict(self) -> dict:
        """As `tusou label --json` and the API give it."""
        return {"label": self.label, "probability": round(self.probability, 6)}


def split_list(text: str | Sequence[str]) -> list[str]:
    """Items of `猫,狗，老虎、熊` (any Chinese or ASCII comma, semicolon or newline) or of a list;
    blanks and repeats dropped. How a user types labels, and negative terms in the UI."""
    parts = re.split(r"[,，、;；\n]", text) if isinstance(text, str) else list(text)
    return list(dict.fromkeys(part.strip() for part in parts if part.strip()))


def parse_labels(text: str | Sequence[str]) -> list[str]:
    """Labels as `split_list` reads them; none at all is the user's error."""
    labels = split_list(text)
    if not labels:
        raise TusouError("no labels given: pass them comma-separated, e.g. --labels 猫,狗,老虎")
    return labels


def check_templates(templates: Sequence[str] | None) -> tuple[str, ...]:
    """The templates, each with exactly one bare `{}`, checked without formatting them: they go
    to str.format, where "{x}" or "{0}{}" raise and "{:>999999999}" builds a gigabyte string."""
    if not templates:
        return DEFAULT_TEMPLATES
    for template in templates:
        try:
            fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template) if name is not None]
        except ValueError:  # a lone { or }
            fields = []
        if fields != [("", "", None)]:
            shown = template if len(template) <= 40 else template[:40] + "…"
            raise TusouError(f"template (模板) {shown!r} must contain {{}} exactly once, where the label goes "
                             "(write {{ and }} for literal braces)")
    return tuple(templates)


def label_vectors(model: EmbeddingModel, labels: Sequence[str], templates: Sequence[str] | None = None) -> np.ndarray:
    templates = check_templates(templates)
    prompts = [template.format(label) for label in labels for template in templates]
    vectors = model.encode_texts(prompts).reshape(len(labels), len(templates), -1).mean(axis=1)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def label_probabilities(model: EmbeddingModel, image_vectors: np.ndarray, class_vectors: np.ndarray) -> np.ndarray:
    logits = model.logit_scale * image_vectors @ class_vectors.T
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def rank_labels(labels: Sequence[str], probabilities: np.ndarray) -> list[LabelScore]:
    """One image's labels, most probable first (ties keep the order given)."""
    order = sorted(range(len(labels)), key=lambda i: (-probabilities[i], i))
    return [LabelScore(labels[i], float(probabilities[i])) for i in order]


def label_images(
    model: EmbeddingModel,
    images: Sequence[str | Path | Image.Image],
    labels: str | Sequence[str],
    templates: Sequence[str] | None = None,
) -> list[list[LabelScore]]:
    """For each image, every label with its probability, highest first."""
    names = parse_labels(labels)
    classes = label_vectors(model, names, templates)
    pictures = [load_query_image(image, min_size=model.image_size) for image in images]
    probabilities = label_probabilities(model, model.encode_images(pictures), classes)
    return [rank_labels(names, row) for row in probabilities]
