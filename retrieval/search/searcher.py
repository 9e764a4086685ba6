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
from retrieval.models.runtime import check_runtime, with_runtime
from retrieval.errors import TusouError
from retrieval.search.encoder import QueryEncoder
from retrieval.search.filters import Filters
from retrieval.search.fusion import Candidate, fuse, text_lift
from retrieval.search.query import POOL_FACTOR, SORT_POOL, Hit, Query, QueryImage, clean_query, mix, pushed, rank, unit
from retrieval.search.text_match import TextMatch, match_text
from retrieval.store.model_ref import IMAGE, TEXT, cast
from retrieval.store.store import StaleView, Store, View, open_store
from retrieval.store.text_lines import has_lines
from retrieval.search.zero_shot import LabelScore, label_images


@dataclass(frozen=True)
class SearchResult:
    """One result. `score` is its cosine to the query, less the negative terms' push when the
    query has any (retrieval.search.query.rank); a search matching text ranks by the fused score
    (`both`: retrieval.search.fusion) or the text match's (`text`), and that is the score."""

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
    ocr: TextMatch | None = None
    """The line of text read in the image that matched the query (a search matching text)."""

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
        if self.ocr is not None:
            fields["ocr"] = self.ocr.to_dict()
        if dedupe:
            fields.update(duplicates=self.duplicates, duplicate_paths=list(self.duplicate_paths))
        return fields


FUSE_POOL = 100
"""Candidates taken from each ranking, the visual and the text, before they are merged."""
MOST_RESULTS = 2**62
"""More results than any index holds, and within SQLite's integers: a larger k or offset asks for
the same (all of them), where it would overflow a LIMIT."""


class QueryCache:
    """The vectors of the last `size` distinct text queries: a repeated one skips the text tower.
    Thread-safe; the tower runs outside its lock, so concurrent misses batch (retrieval.search.encoder)."""

    def __init__(self, size: int = 1024):
        self.size = size
        self.vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def encode(self, encoder: QueryEncoder, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            known = {t: self.vectors[t] for t in texts if t in self.vectors}
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        if missing:
            known |= dict(zip(missing, encoder.encode_texts(missing)))
        with self._lock:
            for text in texts:
                self.vectors[text] = known[text]
                self.vectors.move_to_end(text)
            while len(self.vectors) > self.size:
                self.vectors.popitem(last=False)
        return np.stack([known[t] for t in texts])


class Searcher:
    """`Searcher(index_dir)` loads the index and its model once; queries are then cheap.

    Queries run in the `precision` chosen (retrieval.models.devices.compute_dtype), text queries in
    the `runtime` chosen (retrieval.models.runtime: torch, or ONNX Runtime from `onnx`, an export,
    or from the cache's); repeated text queries come from a cache. It answers several threads at
    once: their queries share the model in batches of up to `max_batch` (retrieval.search.encoder;
    1: each alone). The model is checked to be the one that built the index: its text tower at once,
    its image tower when a query or a label first needs it (an index of an older tusou records one
    fingerprint for both towers, checked at once).
    """

    def __init__(
        self,
        index_dir: str | Path,
        device: str = "auto",
        model: EmbeddingModel | None = None,
        precision: str = "auto",
        cache_size: int = 1024,
        max_batch: int = 1,
        runtime: str | None = None,
        onnx: str | Path | None = None,
    ):
        check_runtime(runtime, onnx)
        self.store: Store = open_store(index_dir)
        ref = self.store.manifest.model
        loaded = model or ref.load_weights(device)
        self.store.check_weights(loaded, TEXT)  # both towers, for an index without per-tower fingerprints
        self.model = cast(with_runtime(loaded, runtime, onnx), precision)
        self._image_check = threading.Lock()
        self._image_unchecked = ref.per_tower  # a cast keeps the fingerprints of the weights as loaded
        self.cache = QueryCache(cache_size)
        self.encoder = QueryEncoder(self.model, max_batch)

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

    def _results(self, view: View, hits: Sequence[Hit], keep_missing: bool = False) -> list[SearchResult]:
        """Results for `hits` (positions in `view`), their catalog rows read in one query; an item deleted
        since is left out (`keep_missing`: None in its place, so the list stays in step with `hits`)."""
        ids = view.ids(np.array([h.row for h in hits] + [f for h in hits for f in h.folded], dtype=np.int64))
        rows = view.items(ids.tolist())
        hit_ids, folded_ids = ids[: len(hits)], iter(ids[len(hits) :])
        results = []
        for number, (hit, item_id) in enumerate(zip(hits, hit_ids), 1):
            row = rows.get(int(item_id))
            if row is None:  # deleted by a commit after this view was taken: its vector is still here, its row not
                if keep_missing:
                    results.append(None)
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
        return self.search_vectors(self.cache.encode(self.encoder, [clean_query(q) for q in queries]), k)

    def search_text(self, query: str, k: int = 10) -> list[SearchResult]:
        return self.search(Query(text=query), k)

    def search_image(self, image: QueryImage, k: int = 10) -> list[SearchResult]:
        return self.search(Query(image=image), k)

    def query_vectors(self, query: Query) -> tuple[np.ndarray, np.ndarray]:
        """The query's positive vector and its negative terms' vectors (one row each). A part the
        weight leaves out (Query.uses_text / uses_image) is not encoded at all; a reference image is
        still read, so a bad one is an error at any weight."""
        texts = ([query.text] if query.uses_text else []) + list(query.negatives)
        encoded = self.cache.encode(self.encoder, texts) if texts else np.empty((0, self.model.dim), np.float32)
        text, negatives = (encoded[0], encoded[1:]) if query.uses_text else (None, encoded)
        image = None
        if query.image is not None:
            model = self.image_model()
            picture = load_query_image(query.image, min_size=model.image_size)
            image = self.encoder.encode_images([picture])[0] if query.uses_image else None
        return mix(text, image, query.weight), negatives

    def has_text(self) -> bool:
        """Whether the index holds text read in its images (`tusou index --ocr`)."""
        return self.store.manifest.segmented and has_lines(self.store.catalog.db)

    def match_of(self, query: Query) -> str:
        """How `query` finds images (Query.match): as asked, else `both` for a text query when the index has text."""
        if query.match == "text" and not self.has_text():
            raise TusouError(f"{self.store.directory} has no text read in its images: index it with `tusou index ... --ocr` first")
        if query.text is None:
            return "visual"
        return query.match or ("both" if self.has_text() else "visual")

    def search(self, query: Query, k: int = 10, offset: int = 0) -> list[SearchResult]:
        """Results `offset + 1` … `offset + k` of a composed query (retrieval.search.query): fetches more
        candidates than wanted when negatives or de-duplication can drop some, until they are settled;
        merged with the text matches as `match_of` says."""
        if not (isinstance(offset, int) and offset >= 0):
            raise TusouError(f"offset {offset!r}: give a whole number of results to skip, 0 or more")
        match = self.match_of(query)
        positive, negatives = self.query_vectors(query) if match != "text" else (None, None)
        wanted = min(offset + max(1, int(k)), MOST_RESULTS)
        if match == "visual":
            results = self._on_current_view(lambda view: self._results(view, self._ranked(view, query, positive, negatives, wanted)))
        else:
            results = self._on_current_view(lambda view: self._matched(view, query, positive, negatives, wanted))
        if query.sort != "score":
            results.sort(key=lambda r: r.taken or "", reverse=query.sort == "newest")
        return [replace(r, rank=number) for number, r in enumerate(results[offset : offset + max(1, int(k))], offset + 1)]

    def _ranked(self, view: View, query: Query, positive: np.ndarray, negatives: np.ndarray, wanted: int) -> list[Hit]:
        """The query's best `wanted` visual hits by score (SORT_POOL of them when sorted by date) in `view`."""
        total = len(view)
        if total == 0:
            return []
        wanted = min(total, wanted if query.sort == "score" else SORT_POOL)
        pool = min(total, POOL_FACTOR * wanted) if query.reranks else wanted
        while True:
            scores, positions = view.search(positive[None], pool, query.filters)
            hits, final = rank(query, scores[0], positions[0], view.vectors, negatives, wanted)
            if final or pool >= total or (positions[0] < 0).any():  # settled, or every match fetched
                return hits
            pool = min(total, pool * POOL_FACTOR)

    def _matched(self, view: View, query: Query, positive: np.ndarray | None, negatives: np.ndarray | None, wanted: int) -> list[SearchResult]:
        """The best `wanted` of the visual hits and the text matches in one ranking (`text`: the
        text matches alone, by their own score), each found by its text carrying its line."""
        pool = max(FUSE_POOL, wanted if query.sort == "score" else SORT_POOL)
        visual = [] if positive is None else self._ranked(view, query, positive, negatives, pool)
        matches = match_text(self.store.catalog.db, query.text, query.filters, pool)
        candidates = {hit.row: Candidate(hit.row, hit.score, number, None, None) for number, hit in enumerate(visual, 1)}
        rows = view.items([m.item for m in matches])
        found = [(view.position_of(rows.get(m.item)), number, m) for number, m in enumerate(matches, 1)]
        found = [(position, number, m) for position, number, m in found if position is not None]  # a commit since the view
        unseen = np.array([position for position, _, _ in found if position not in candidates], dtype=np.int64)
        cosines = dict(zip(unseen.tolist(), self._visual_scores(view, positive, negatives, unseen)))
        for position, number, m in found:
            known = candidates.get(position)
            if known is None and positive is not None and query.min_score is not None and cosines[position] < query.min_score:
                continue  # as the visual ranking drops what scores below it
            visual_score = cosines[position] if known is None else known.visual
            candidates[position] = Candidate(position, visual_score, known.visual_rank if known else None, m, number)
        if positive is None:
            ranked = [(c, text_lift(c.text)) for c in sorted(candidates.values(), key=lambda c: c.text_rank)]
        else:
            ranked = fuse(list(candidates.values()), query.fusion)
        folded = {hit.row: hit.folded for hit in visual}
        hits = [Hit(c.position, score, folded.get(c.position, [])) for c, score in ranked[:wanted]]
        texts = {c.position: c.text for c, _ in ranked[:wanted]}
        return [replace(result, ocr=texts[hit.row]) for hit, result in zip(hits, self._results(view, hits, keep_missing=True)) if result]

    def _visual_scores(self, view: View, positive: np.ndarray | None, negatives: np.ndarray | None, positions: np.ndarray) -> np.ndarray:
        """The visual scores (as `rank` gives them) of items the visual search did not fetch; 0 without a query vector."""
        if positive is None or not len(positions):
            return np.zeros(len(positions))
        vectors = unit(view.vectors(positions))
        return pushed(vectors @ positive, vectors, negatives)

    def label(
        self, image: str | Path | Image.Image, labels: str | Sequence[str], templates: Sequence[str] | None = None
    ) -> list[LabelScore]:
        self.image_model()
        with self.encoder.exclusive() as model:
            return label_images(model, [image], labels, templates)[0]

