"""The query layer: an index on disk plus the model that built it answers queries."""

from __future__ import annotations

import unicodedata
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from retrieval.devices import compute_dtype
from retrieval.errors import TusouError
from retrieval.images import load_query_image
from retrieval.index_store import StoredIndex, check_model, open_index
from retrieval.model import EmbeddingModel, load_model
from retrieval.zero_shot import LabelScore, label_images


@dataclass(frozen=True)
class SearchResult:
    rank: int
    score: float
    id: int
    path: str


MAX_QUERY_CHARS = 2000
"""A query is cut here before tokenizing: the text towers read at most 77 tokens (far fewer
characters than this), while tokenizing a megabyte-long query would hold the model for seconds."""


def strip_controls(text: str) -> str:
    """`text` without control, format, private-use or unpaired surrogate characters (Unicode
    category C*), whitespace kept. The BERT tokenizer drops these anyway, so a query of only
    them is empty; and an unpaired surrogate (a bad byte in argv, or "\\ud800" in JSON) makes
    the tokenizer raise instead."""
    return "".join(ch for ch in text if ch.isspace() or not unicodedata.category(ch).startswith("C"))


def clean_query(query: str | None) -> str:
    """The query the model is given: controls dropped, whitespace collapsed, at most
    MAX_QUERY_CHARS; TusouError when nothing is left to search for."""
    text = " ".join(strip_controls((query or "")[:MAX_QUERY_CHARS]).split())
    if not text:
        raise TusouError("empty query: give some words to search for")
    return text


class QueryCache:
    """The vectors of the last `size` distinct text queries: a repeated one skips the text tower."""

    def __init__(self, size: int = 1024):
        self.size = size
        self.vectors: OrderedDict[str, np.ndarray] = OrderedDict()

    def encode(self, model: EmbeddingModel, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self.vectors))
        for text, vector in zip(missing, model.encode_texts(missing) if missing else []):
            self.vectors[text] = vector
        rows = []
        for text in texts:
            self.vectors.move_to_end(text)
            rows.append(self.vectors[text])
        while len(self.vectors) > self.size:
            self.vectors.popitem(last=False)
        return np.stack(rows)


class Searcher:
    """`Searcher(index_dir)` loads the index and its model once; queries are then cheap.

    Queries run in the `precision` chosen (retrieval.devices.compute_dtype); repeated text
    queries come from a cache.
    """

    def __init__(
        self,
        index_dir: str | Path,
        device: str = "auto",
        model: EmbeddingModel | None = None,
        precision: str = "auto",
        cache_size: int = 1024,
    ):
        self.index: StoredIndex = open_index(index_dir)
        built = self.index.manifest.model
        self.model = model or load_model(
            built["name"],
            device=device,
            text_weights=built.get("text_weights"),
            image_weights=built.get("image_weights"),
        )
        check_model(self.index.manifest, self.index.directory, self.model.name, self.model.fingerprint())
        self.model = self.model.with_dtype(compute_dtype(self.model.device, precision))
        self.cache = QueryCache(cache_size)

    def __len__(self) -> int:
        return len(self.index.items)

    def search_vectors(self, vectors: np.ndarray, k: int = 10) -> list[list[SearchResult]]:
        """Top-k items for each row of `vectors` (L2-normalised, the index's dim)."""
        k = max(1, min(int(k), len(self)))
        if len(self) == 0:
            return [[] for _ in range(len(vectors))]
        scores, ids = self.index.search(vectors, k)
        return [
            [
                SearchResult(rank=rank, score=float(score), id=self.index.items[row].id, path=self.index.items[row].path)
                for rank, (score, row) in enumerate(zip(row_scores, row_ids), 1)
                if row >= 0
            ]
            for row_scores, row_ids in zip(scores, ids)
        ]

    def search_texts(self, queries: Sequence[str], k: int = 10) -> list[list[SearchResult]]:
        """Several text queries at once: one batch through the text tower, one FAISS search."""
        return self.search_vectors(self.cache.encode(self.model, [clean_query(q) for q in queries]), k)

    def search_text(self, query: str, k: int = 10) -> list[SearchResult]:
        return self.search_texts([query], k)[0]

    def search_image(self, image: str | Path | Image.Image, k: int = 10) -> list[SearchResult]:
        picture = load_query_image(image, min_size=self.model.image_size)
        return self.search_vectors(self.model.encode_images([picture]), k)[0]

    def label(
        self, image: str | Path | Image.Image, labels: str | Sequence[str], templates: Sequence[str] | None = None
    ) -> list[LabelScore]:
        return label_images(self.model, [image], labels, templates)[0]

