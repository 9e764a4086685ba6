"""An evaluation run: read a dataset, embed (or re-use cached features), score, report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eval import datasets
from eval.features import cache_path, load_or_embed
from retrieval.search.metrics import KS, hits_at_k, rank_items
from eval.published import figures
from retrieval.errors import TusouError
from retrieval.models.model import EmbeddingModel
from retrieval.search.zero_shot import DEFAULT_TEMPLATES, label_vectors

PREDICTIONS_K = 10


@dataclass
class EvalResult:
    results: dict
    predictions: list[dict]
    """Top-10 image ids per text, Chinese-CLIP's submission format (empty for zero-shot)."""


def _settings(model: EmbeddingModel) -> dict:
    """How the model reads its inputs, from one real tokenization (so the report cannot drift from the code)."""
    inputs = model.text_model.tokenize(["一"])
    ids = next(iter(inputs.values()))
    padding = f"max_length {ids.shape[1]}" if ids.shape[1] == model.text_model.context_length else "longest"
    return {
        "model": model.name,
        "context_length": model.text_model.context_length,
        "padding": f"{padding}, {'attention mask' if 'attention_mask' in inputs else 'no mask' if 'input_ids' in inputs else 'masked by the model'}",
        "text_tower": type(model.text_model).__name__,
        "image_size": model.image_size,
        "image_tower": type(model.image_model).__name__,
        "device": str(model.device),
    }


def _published(model: EmbeddingModel, dataset: str) -> dict:
    """The published figures for this model and dataset, and where they come from (test set included)."""
    found = figures(model.name, dataset)
    return {"published": dict(found.metrics) if found else {}, "published_source": found.cite() if found else None}


def evaluate_retrieval(
    model: EmbeddingModel, dataset: str, data: Path, split: str, fmt: str | None, cache_dir: Path | None,
    batch_size: int = 64, progress: bool = True,
) -> EvalResult:
    if not data.is_dir():
        raise TusouError(f"--data {data}: no such folder")
    rows = datasets.reader(dataset, fmt)(data, split)
    cache = cache_path(cache_dir, model, dataset, split, rows.files) if cache_dir else None
    features = load_or_embed(model, cache, rows.images, [c.text for c in rows.captions], batch_size, progress)
    position = {key: row for row, key in enumerate(features.keys)}
    failed = {entry["image"] for entry in features.failed}
    kept = [i for i, c in enumerate(rows.captions) if any(image_id in position for image_id in c.image_ids)]
    captions = [rows.captions[i] for i in kept]
    texts = features.texts[kept]
    if not captions:
        raise TusouError(f"{data}: no caption has a readable image to score")

    text_correct = [{position[i] for i in c.image_ids if i in position} for c in captions]
    image_correct: list[set[int]] = [set() for _ in features.keys]
    for text_row, rows_of_text in enumerate(text_correct):
        for image_row in rows_of_text:
            image_correct[image_row].add(text_row)
    t2i_ranked = rank_items(texts, features.images, max(KS + (PREDICTIONS_K,)))
    i2t_ranked = rank_items(features.images, texts, max(KS))
    metrics = {}
    for direction, ranked, correct in (("text_to_image", t2i_ranked, text_correct), ("image_to_text", i2t_ranked, image_correct)):
        for k, value in hits_at_k(ranked, correct).items():
            metrics[f"{direction}_R@{k}"] = round(100 * value, 2)
    metrics["mean_recall"] = round(float(np.mean(list(metrics.values()))), 2)
    missing = rows.missing + [{"image": key, "reason": "unreadable"} for key in sorted(failed)]
    results = {
        "dataset": dataset,
        "format": fmt,
        "split": split,
        "model": {"name": model.name, "fingerprint": model.fingerprint()},
        "counts": {
            "images": len(features.keys),
            "texts": len(captions),
            "missing_images": len(missing),
            "texts_without_image": len(rows.captions) - len(captions),
        },
        "metrics": metrics,
        **_published(model, dataset),
        "missing": missing,
        "settings": _settings(model) | {"features_cached": features.cached, "metric": "hit@K (Chinese-CLIP evaluation.py)"},
    }
    predictions = [
        {"text_id": c.text_id, "image_ids": [int(features.keys[row]) for row in ranked[:PREDICTIONS_K]]}
        for c, ranked in zip(captions, t2i_ranked)
    ]
    return EvalResult(results, predictions)


def evaluate_zero_shot(
    model: EmbeddingModel, data: Path, split: str, templates_file: Path | None, cache_dir: Path | None,
    batch_size: int = 64, progress: bool = True,
) -> EvalResult:
    if not data.is_dir():
        raise TusouError(f"--data {data}: no such folder")
    rows = datasets.read_imagenet_cn(data, split)
    templates = datasets.read_templates(templates_file) if templates_file else list(DEFAULT_TEMPLATES)
    sources = {str(path): path for path, _ in rows.images}
    cache = cache_path(cache_dir, model, "imagenet-cn", split, rows.files) if cache_dir else None
    features = load_or_embed(model, cache, sources, [], batch_size, progress)
    label_of = {str(path): label for path, label in rows.images}
    labels = np.array([label_of[key] for key in features.keys])
    classes = label_vectors(model, rows.classes, templates)
    ranked = rank_items(features.images, classes, 5)
    top1 = ranked[:, 0] == labels
    top5 = (ranked == labels[:, None]).any(axis=1)
    per_class = [top1[labels == c].mean() for c in range(len(rows.classes)) if (labels == c).any()]
    results = {
        "dataset": "imagenet-cn",
        "split": split,
        "model": {"name": model.name, "fingerprint": model.fingerprint()},
        "counts": {"images": len(labels), "classes": len(rows.classes), "missing_images": len(features.failed)},
        "metrics": {
            "top1": round(100 * float(top1.mean()), 2),
            "top5": round(100 * float(top5.mean()), 2),
            "mean_per_class_recall": round(100 * float(np.mean(per_class)), 2),
        },
        **_published(model, "imagenet-cn"),
        "missing": features.failed,
        "settings": _settings(model) | {"templates": templates, "features_cached": features.cached},
    }
    return EvalResult(results, [])
