"""The query layer: an index on disk plus the model that built it answers queries."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from retrieval.images import load_query_image
from retrieval.models.model import EmbeddingModel
from retrieval.store.index_store import StoredIndex, open_index
from retrieval.store.model_ref import IMAGE, TEXT, cast
from retrieval.search.query import POOL_FACTOR, Query, QueryImage, clean_query, mix, rank
from retrieval.search.zero_shot import LabelScore, label_images


@dataclass(frozen=True)
class SearchResult:
    """One result. `score` is its cosine to the query, less the negative terms' push when the
    query has any (retrieval.search.query.rank)."""

    rank: int
    score: float
    id: int
    path: str
    duplicate_paths: tuple[str, ...] = ()
    """Near-duplicates folded into this result (only when the query de-duplicates)."""

    @property
    def duplicates(self) -> int:
        return len(self.duplicate_paths)


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

    Queries run in the `precision` chosen (retrieval.models.devices.compute_dtype); repeated text
    queries come from a cache. The model is checked to be the one that built the index: its text
    tower at once, its image tower when a query or a label first needs it (an index of an older
    tusou records one fingerprint for both towers, checked at once).
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
        ref = self.index.manifest.model
        loaded = model or ref.load_weights(device)
        self.index.check_weights(loaded, TEXT)  # both towers, for an index without per-tower fingerprints
        self.model = cast(loaded, precision)
        self._image_check = threading.Lock()
        self._image_unchecked = ref.per_tower  # a cast keeps the fingerprints of the weights as loaded
        self.cache = QueryCache(cache_size)

    def image_model(self) -> EmbeddingModel:
        """The model, its image tower checked (once, by the first caller that needs it)."""
        if self._image_unchecked:
            with self._image_check:
                if self._image_unchecked:
                    self.index.check_weights(self.model, IMAGE)
                    self._image_unchecked = False
        return self.model

    def __len__(self) -> int:
        return len(self.index.items)

    def _result(self, rank: int, row: int, score: float, folded: Sequence[int] = ()) -> SearchResult:
        items = self.index.items
        return SearchResult(rank, float(score), items[row].id, items[row].path, tuple(items[f].path for f in folded))

    def search_vectors(self, vectors: np.ndarray, k: int = 10) -> list[list[SearchResult]]:
        """Top-k items for each row of `vectors` (L2-normalised, the index's dim)."""
        k = max(1, min(int(k), len(self)))
        if len(self) == 0:
            return [[] for _ in range(len(vectors))]
        scores, ids = self.index.search(vectors, k)
        return [
            [self._result(rank, row, score) for rank, (score, row) in enumerate(zip(row_scores, row_ids), 1) if row >= 0]
            for row_scores, row_ids in zip(scores, ids)
        ]

    def search_texts(self, queries: Sequence[str], k: int = 10) -> list[list[SearchResult]]:
        """Several text queries at once: one batch through the text tower, one FAISS search."""
        return self.search_vectors(self.cache.encode(self.model, [clean_query(q) for q in queries]), k)

    def search_text(self, query: str, k: int = 10) -> list[SearchResult]:
        return self.search(Query(text=query), k)

    def search_image(self, image: QueryImage, k: int = 10) -> list[SearchResult]:
        return self.search(Query(image=image), k)

    def query_vectors(self, query: Query) -> tuple[np.ndarray, np.ndarray]:
        """The query's positive vector and its negative terms' vectors (one row each). A part the
        weight leaves out (Query.uses_text / uses_image) is not encoded at all; a reference image is
        still read, so a bad one is an error at any weight."""
        texts = ([query.text] if query.uses_text else []) + list(query.negatives)
        encoded = self.cache.encode(self.model, texts) if texts else np.empty((0, self.model.dim), np.float32)
        text, negatives = (encoded[0], encoded[1:]) if query.uses_text else (None, encoded)
        image = None
        if query.image is not None:
            model = self.image_model()
            picture = load_query_image(query.image, min_size=model.image_size)
            image = model.encode_images([picture])[0] if query.uses_image else None
        return mix(text, image, query.weight), negatives

    def search(self, query: Query, k: int = 10) -> list[SearchResult]:
        """The top k for a composed query (retrieval.search.query): fetches more candidates than k
        when negatives or de-duplication can drop some, until the top k are settled."""
        positive, negatives = self.query_vectors(query)
        if len(self) == 0:
            return []
        k = max(1, min(int(k), len(self)))
        pool = min(len(self), POOL_FACTOR * k) if query.reranks else k
        while True:
            scores, rows = self.index.search(positive[None], pool)
            hits, final = rank(query, scores[0], rows[0], self.index.embeddings, negatives, k)
            if final or pool == len(self):
                return [self._result(number, hit.row, hit.score, hit.folded) for number, hit in enumerate(hits, 1)]
            pool = min(len(self), pool * POOL_FACTOR)

    def label(
        self, image: str | Path | Image.Image, labels: str | Sequence[str], templates: Sequence[str] | None = None
    ) -> list[LabelScore]:
        return label_images(self.image_model(), [image], labels, templates)[0]

