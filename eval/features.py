"""Embedding a benchmark's images and texts once, cached per (model weights, dataset, split).

The cache key includes the model's weight fingerprint and the dataset files' sizes and
mtimes, so a second run with the same model and data re-uses the features and any change
re-embeds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from retrieval.cache import cache_root
from retrieval.store.atomic import atomic_write
from retrieval.images import ImageError, open_image
from retrieval.models.model import EmbeddingModel


def default_cache_dir() -> Path:
    return cache_root() / "features"


@dataclass
class Features:
    keys: list
    """Image keys (dataset ids or paths) of the rows of `images`, in order."""
    images: np.ndarray
    texts: np.ndarray
    failed: list[dict]
    """Images that could not be decoded, with the reason."""
    cached: bool = False


def cache_path(cache_dir: Path, model: EmbeddingModel, dataset: str, split: str, files: list[Path]) -> Path:
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    name = f"{dataset}-{split}-{digest.hexdigest()[:12]}.npz"
    return cache_dir / f"{model.name}-{model.fingerprint()}" / name


def embed_images(model: EmbeddingModel, sources: dict, batch_size: int, progress: bool) -> tuple[list, np.ndarray, list[dict]]:
    keys, rows, failed, batch = [], [], [], []

    def flush() -> None:
        if batch:
            rows.append(model.encode_images([image for _, image in batch], batch_size=len(batch)))
            keys.extend(key for key, _ in batch)
            batch.clear()

    for key, source in tqdm(sources.items(), desc="images", unit=" img", disable=not progress):
        try:
            batch.append((key, open_image(source, min_size=model.image_size)))
        except ImageError as exc:
            failed.append({"image": str(key), "reason": str(exc)})
        if len(batch) == batch_size:
            flush()
    flush()
    return keys, np.concatenate(rows) if rows else np.zeros((0, model.dim), np.float32), failed


def embed_texts(model: EmbeddingModel, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
    rows = [
        model.encode_texts(texts[start : start + batch_size], batch_size=batch_size)
        for start in tqdm(range(0, len(texts), batch_size), desc="texts", unit=" batch", disable=not progress)
    ]
    return np.concatenate(rows) if rows else np.zeros((0, model.dim), np.float32)


def load_or_embed(
    model: EmbeddingModel, cache: Path | None, sources: dict, texts: list[str], batch_size: int = 64, progress: bool = True
) -> Features:
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            return Features(meta["keys"], data["images"], data["texts"], meta["failed"], cached=True)
    keys, images, failed = embed_images(model, sources, batch_size, progress)
    text_vectors = embed_texts(model, texts, batch_size, progress)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        meta = json.dumps({"keys": keys, "failed": failed}, ensure_ascii=False)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, images=images, texts=text_vectors, meta=np.array(meta))

        atomic_write(cache, write)
    return Features(keys, images, text_vectors, failed)
