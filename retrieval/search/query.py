"""What a search asks for, and how its candidates become a ranking.

A `Query` is a text, a reference image or both (mixed by `weight`), negative terms that
push results down, a score threshold, and a near-duplicate threshold. `mix` turns the
positive part into one vector for the FAISS search; `rank` re-scores the candidates that
search returns (negatives, threshold, folding of near-duplicates) and says whether they
are final or more candidates are needed.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from retrieval.errors import TusouError
from retrieval.search.filters import Filters
from retrieval.search.fusion import FUSIONS

MAX_QUERY_CHARS = 2000
"""A query is cut here before tokenizing: the text towers read at most 77 tokens (far fewer
characters than this), while tokenizing a megabyte-long query would hold the model for seconds."""
IMAGE_WEIGHT = 0.5
NEGATIVE_WEIGHT = 0.5
"""How hard a negative term pushes: on the `demo` model 0.5 moves every image of the negated
colour below all other images of the queried shape, while the shape still comes first."""
DEDUPE_THRESHOLD = 0.95
"""Cosine between two stored image vectors above which they count as the same picture
(re-encodes, resizes, small crops); distinct photos of one scene stay below it."""
POOL_FACTOR = 4
"""Candidates fetched per result wanted when negatives or de-duplication may drop some; the
pool grows by this factor until the top k are settled."""

MATCHES = ("both", "visual", "text")
"""How a text query finds images: by how they look (visual: CLIP), by the text read in them (text), or
both in one ranking (retrieval.search.fusion)."""

SORTS = ("score", "newest", "oldest")
SORT_POOL = 200
"""Results ordered by date are the best this many by score (those above min_score, when given):
a date order over everything the filters admit would ignore the query."""

QueryImage = str | Path | bytes | Image.Image


def strip_controls(text: str) -> str:
    """`text` without control, format, private-use or unpaired surrogate characters (Unicode
    category C*), whitespace kept. The BERT tokenizer drops these anyway, so a query of only
    them is empty; and an unpaired surrogate (a bad byte in argv, or "\\ud800" in JSON) makes
    the tokenizer raise instead."""
    return "".join(ch for ch in text if ch.isspace() or not unicodedata.category(ch).startswith("C"))


def clean_query(query: str | None, what: str = "empty query: give some words to search for") -> str:
    """The query the model is given: controls dropped, whitespace collapsed, at most
    MAX_QUERY_CHARS; TusouError(`what`) when nothing is left to search for."""
    text = " ".join(strip_controls((query or "")[:MAX_QUERY_CHARS]).split())
    if not text:
        raise TusouError(what)
    return text


def _check_range(name: str, value: float | None, low: float, high: float, meaning: str) -> None:
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
        raise TusouError(f"{name} {value!r} is outside {low:g}..{high:g}: {meaning}")


@dataclass
class Query:
    """One search. Checked and cleaned on creation, so a mistake is a TusouError before any
    model is loaded.

    - `text` and `image`: what to find; either or both. With both, `weight` is the image's
      share: the positive vector is (1 − weight)·text + weight·image, L2-normalised, which
      ranks exactly as (1 − weight)·cos(text) + weight·cos(image). At weight 0 the image takes
      no part (and at 1 the text), so the search is the other part's alone, bit for bit.
      Image–image cosines spread wider than text–image ones on CLIP models, so at 0.5 the
      image tends to lead; lower it for a text-led search.
    - `negatives`: texts whose look pushes a result down (see `rank`).
    - `min_score`: results scoring below it are dropped.
    - `dedupe`: a cosine threshold between stored image vectors; a result at or above it to a
      better-ranked result is folded into that one (None: keep every result).
    - `filters`: which items may be returned (retrieval.search.filters); the top k within them are
      exact where few match, the index's tuned recall where many do.
    - `sort`: `score`, or `newest` / `oldest` first among the best SORT_POOL results by score.
    - `match`: `visual`, `text` or `both` (MATCHES); None: `both` when the index has text read
      (`tusou index --ocr`), else `visual`. Only a text query can match text.
    - `fusion`: how `both` merges the two rankings (retrieval.search.fusion.FUSIONS).
    """

    text: str | None = None
    image: QueryImage | None = None
    weight: float = IMAGE_WEIGHT
    negatives: Sequence[str] = ()
    min_score: float | None = None
    dedupe: float | None = None
    filters: Filters = field(default_factory=Filters)
    sort: str = "score"
    match: str | None = None
    fusion: str = "calibrated"

    def __post_init__(self) -> None:
        if self.text is not None:
            self.text = clean_query(self.text)
        self.negatives = tuple(dict.fromkeys(
            clean_query(term, "empty negative term: give words whose images to push down") for term in self.negatives
        ))
        if self.text is None and self.image is None:
            raise TusouError(
                "negative terms only push results down: give a text query or a reference image to search for"
                if self.negatives else "nothing to search for: give a text query or a reference image"
            )
        _check_range("weight", self.weight, 0, 1, "it is the reference image's share of the query (0 = text only, 1 = image only)")
        _check_range("min-score", self.min_score, -1, 1, "scores are cosines (minus the negative terms' push)")
        if self.sort not in SORTS:
            raise TusouError(f"sort {self.sort!r}: choose one of {', '.join(SORTS)}")
        if self.match is not None and self.match not in MATCHES:
            raise TusouError(f"match {self.match!r}: choose one of {', '.join(MATCHES)}")
        if self.match == "text" and self.text is None:
            raise TusouError("match text finds the words read in images: give a text query")
        if self.fusion not in FUSIONS:
            raise TusouError(f"fusion {self.fusion!r}: choose one of {', '.join(FUSIONS)}")
        if self.dedupe is not None and not (isinstance(self.dedupe, (int, float)) and 0 < self.dedupe <= 1):
            raise TusouError(f"dedupe threshold {self.dedupe!r} is outside (0, 1]: it is the cosine above which two images count as one")

    @property
    def uses_text(self) -> bool:
        """Whether the text enters the positive vector: it is given, and not outweighed (weight 1) by an image."""
        return self.text is not None and not (self.image is not None and self.weight == 1)

    @property
    def uses_image(self) -> bool:
        """Whether the reference image enters the positive vector: it is given, and not weighted 0 beside a text."""
        return self.image is not None and not (self.text is not None and self.weight == 0)

    @property
    def reranks(self) -> bool:
        """Whether results can drop out of the positive ranking (so more candidates than k are needed)."""
        return bool(self.negatives) or self.dedupe is not None


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (stored float16 vectors are only nearly so)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def mix(text: np.ndarray | None, image: np.ndarray | None, weight: float) -> np.ndarray:
    """The positive query vector: text and image vectors (each L2-normalised) mixed by the image's
    `weight`, L2-normalised again. One part alone, or a part weighted 0, leaves the other as it
    is, so such a query scores exactly as that part alone (not merely up to rounding)."""
    if image is None or (text is not None and weight == 0):
        return np.asarray(text, dtype=np.float32)
    if text is None or weight == 1:
        return np.asarray(image, dtype=np.float32)
    vector = (1 - weight) * np.asarray(text, dtype=np.float32) + weight * np.asarray(image, dtype=np.float32)
    if np.linalg.norm(vector) < 1e-6:
        raise TusouError("the text and the reference image cancel out: change the weight")
    return unit(vector)


@dataclass
class Hit:
    """A candidate kept in the ranking: its catalog row, its score, and the rows folded into it."""

    row: int
    score: float
    folded: list[int] = field(default_factory=list)


def pushed(scores: np.ndarray, vectors: np.ndarray | None, negatives: np.ndarray) -> np.ndarray:
    """`scores` less the negative terms' push on the items of `vectors` (unit rows; see `rank`)."""
    if not len(negatives):
        return scores
    return scores - NEGATIVE_WEIGHT * np.clip(vectors @ negatives.T, 0, None).max(axis=1)


def rank(
    query: Query, scores: np.ndarray, rows: np.ndarray, stored: Callable[[np.ndarray], np.ndarray], negatives: np.ndarray, k: int
) -> tuple[list[Hit], bool]:
    """The top `k` of one query's candidates, and whether they are final.

    `scores`/`rows` are the index search for the positive vector (best first, rows -1 past
    the end); `stored(rows)` gives their stored vectors; `negatives` the negative terms' unit
    text vectors, one per row.

    A result's score is its cosine to the positive vector minus NEGATIVE_WEIGHT × its
    highest cosine to any negative term (counted from 0: an image unlike a term is not
    pushed up). Why re-score rather than subtract the negatives from the query vector: a
    subtracted vector steers the search toward whatever lies opposite the term in embedding
    space, which is not "without it", and averaging several terms would weaken each; this
    only lowers what looks like a term, each term at full strength, and the score stays a
    cosine less a stated penalty. Without negatives the score is the plain cosine.

    Candidates are taken best first; those below `min_score` are dropped; with `dedupe`, a
    candidate whose stored vector has cosine ≥ dedupe to a kept result is folded into the most
    similar kept one (counting near-duplicates among the candidates seen). Penalties only
    lower scores, so an item not fetched scores at most the lowest positive score fetched:
    the ranking is final once the k-th result scores at least that, or that is below
    `min_score`.
    """
    found = rows >= 0
    rows, positive = rows[found], np.asarray(scores[found], dtype=np.float64)
    vectors = unit(stored(rows)) if query.reranks else None
    final_scores = pushed(positive, vectors, negatives)
    hits: list[Hit] = []
    kept = np.empty((min(k, len(rows)), vectors.shape[1]) if query.dedupe is not None else (0, 0), dtype=np.float32)
    for i in np.argsort(-final_scores, kind="stable"):
        if query.min_score is not None and final_scores[i] < query.min_score:
            break
        if query.dedupe is not None and hits:
            similarity = kept[: len(hits)] @ vectors[i]
            best = int(np.argmax(similarity))
            if similarity[best] >= query.dedupe:
                hits[best].folded.append(int(rows[i]))
                continue
        if len(hits) == k:
            if query.dedupe is None:
                break
            continue  # full, but later candidates may still be near-duplicates of the kept ones
        if query.dedupe is not None:
            kept[len(hits)] = vectors[i]
        hits.append(Hit(int(rows[i]), float(final_scores[i])))
    unseen_best = positive[-1] if len(positive) else -np.inf
    final = (len(hits) == k and hits[-1].score >= unseen_best) or (query.min_score is not None and unseen_best < query.min_score)
    return hits, bool(final)
