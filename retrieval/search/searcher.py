"""The query layer: an index on disk plus the model that built it answers queries."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from retrieval.images import load_query_image
from retrieval.models.model import EmbeddingModel
from retrieval.errors import TusouError
from retrieval.search.filters import Filters
from retrieval.search.query import POOL_FACTOR, SORT_POOL, Hit, Query, QueryImage, clean_query, mix, rank, unit
from retrieval.store.model_ref import IMAGE, TEXT, cast
from retrieval.store.store import StaleView, Store, View, open_store
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
    taken: str | None = None
    """When the photo was taken (local time, ISO): its EXIF time, else its file's mtime (`taken_from`)."""
    taken_from: str | None = None
    width: int | None = None
    height: int | None = None
    camera: str | None = None

    @property
    def duplicates(self) -> int:
        return len(self.duplicate_paths)

    def to_dict(self, dedupe: bool = False) -> dict:
        """The result as `--json` gives it: camera only when known; a de-duplicating search adds how
        many near-duplicates were folded in, and their paths."""
        fields = {
            "rank": self.rank, "score": round(self.score, 6), "id": self.id, "path": self.path,
            "taken": self.taken, "taken_from": self.taken_from, "width": self.width, "height": self.height,
        }
        if self.camera:
            fields["camera"] = self.camera
        if dedupe:
            fields.update(duplicates=self.duplicates, duplicate_paths=list(self.duplicate_paths))
        return fields


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
        self.store: Store = open_store(index_dir)
        ref = self.store.manifest.model
        loaded = model or ref.load_weights(device)
        self.store.check_weights(loaded, TEXT)  # both towers, for an index without per-tower fingerprints
        self.model = cast(loaded, precision)
        self._image_check = threading.Lock()
        self._image_unchecked = ref.per_tower  # a cast keeps the fingerprints of the weights as loaded
        self.cache = QueryCache(cache_size)

    def close(self) -> None:
        """Close the index's catalog (a Searcher is no use after it)."""
        self.store.close()

    def image_model(self) -> EmbeddingModel:
        """The model, its image tower checked (once, by the first caller that needs it)."""
        if self._image_unchecked:
            with self._image_check:
                if self._image_unchecked:
                    self.store.check_weights(self.model, IMAGE)
                    self._image_unchecked = False
        return self.model

    def __len__(self) -> int:
        """Items in the index as its last commit left it."""
        return len(self.store.view())

    def _results(self, view: View, hits: Sequence[Hit]) -> list[SearchResult]:
        """Results for `hits` (positions in `view`), their catalog rows read in one query."""
        ids = view.ids(np.array([h.row for h in hits] + [f for h in hits for f in h.folded], dtype=np.int64))
        rows = self.store.catalog.items(ids.tolist())
        hit_ids, folded_ids = ids[: len(hits)], iter(ids[len(hits) :])
        results = []
        for number, (hit, item_id) in enumerate(zip(hits, hit_ids), 1):
            row = rows.get(int(item_id))
            if row is None:  # deleted by a commit after this view was taken: its vector is still here, its row not
                continue
            folded = [rows[int(f)]["path"] for f in (next(folded_ids) for _ in hit.folded) if int(f) in rows]
            results.append(SearchResult(
                number, float(hit.score), int(item_id), row["path"], tuple(folded),
                row["taken"], row["taken_from"], row["width"], row["height"], row["camera"],
            ))
        return results

    def _on_current_view(self, search: Callable[[View], list]) -> list:
        """`search(view)` on the index as last committed; again on a newer view when a commit came
        between taking the view and a filter's catalog reads (StaleView): one commit's answer, never a mix."""
        while True:
            try:
                return search(self.store.view())
            except StaleView:
                continue

    def search_vectors(self, vectors: np.ndarray, k: int = 10, filters: Filters | None = None) -> list[list[SearchResult]]:
        """Top-k items for each row of `vectors` (L2-normalised, the index's dim), within `filters`."""

        def on(view: View) -> list[list[SearchResult]]:
            if len(view) == 0:
                return [[] for _ in range(len(vectors))]
            scores, positions = view.search(vectors, max(1, min(int(k), len(view))), filters)
            return [
                self._results(view, [Hit(int(p), float(s)) for s, p in zip(row_scores, row_positions) if p >= 0])
                for row_scores, row_positions in zip(scores, positions)
            ]

        return self._on_current_view(on)

    def item(self, item_id: int) -> dict | None:
        """An item's catalog row (path, stamp, size, metadata), None when it is not in the index."""
        return self.store.catalog.items([int(item_id)]).get(int(item_id))

    def item_vector(self, item_id: int) -> np.ndarray | None:
        """An item's stored vector, unit length (None when it is not in the index)."""
        view = self.store.view()
        position = view.position_of(self.item(item_id))
        return None if position is None else unit(view.vectors(np.array([position]))[0])

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

    def search(self, query: Query, k: int = 10, offset: int = 0) -> list[SearchResult]:
        """Results `offset + 1` … `offset + k` of a composed query (retrieval.search.query): fetches more
        candidates than wanted when negatives or de-duplication can drop some, until they are settled."""
        if not (isinstance(offset, int) and offset >= 0):
            raise TusouError(f"offset {offset!r}: give a whole number of results to skip, 0 or more")
        positive, negatives = self.query_vectors(query)
        results = self._on_current_view(lambda view: self._ranked(view, query, positive, negatives, offset + max(1, int(k))))
        if query.sort != "score":
            results.sort(key=lambda r: r.taken or "", reverse=query.sort == "newest")
        return [replace(r, rank=number) for number, r in enumerate(results[offset : offset + max(1, int(k))], offset + 1)]

    def _ranked(self, view: View, query: Query, positive: np.ndarray, negatives: np.ndarray, wanted: int) -> list[SearchResult]:
        """The query's best `wanted` results by score (SORT_POOL of them when sorted by date) in `view`."""
        total = len(view)
        if total == 0:
            return []
        wanted = min(total, wanted if query.sort == "score" else SORT_POOL)
        pool = min(total, POOL_FACTOR * wanted) if query.reranks else wanted
        while True:
            scores, positions = view.search(positive[None], pool, query.filters)
            hits, final = rank(query, scores[0], positions[0], view.vectors, negatives, wanted)
            if final or pool >= total or (positions[0] < 0).any():  # settled, or every match fetched
                return self._results(view, hits)
            pool = min(total, pool * POOL_FACTOR)

    def label(
        self, image: str | Path | Image.Image, labels: str | Sequence[str], templates: Sequence[str] | None = None
    ) -> list[LabelScore]:
        return label_images(self.image_model(), [image], labels, templates)[0]

