"""One ranking from two: the visual search's candidates and the items whose read text matches.

A text query on an index with text read (`tusou index --ocr`) searches both ways (`match="both"`).
Each candidate has its visual score (its cosine to the query vector, less the negative terms' push:
retrieval.search.query.rank; computed exactly from its stored vector when only its text found it),
and a text match or none (retrieval.search.text_match: exact or one edit away, with coverage ×
confidence). Two ways to merge them, measured on the OCR benchmark set (docs/evaluation.md):

- `calibrated` (the default): each evidence on one scale. The visual scores are calibrated per query
  against the query's own visual candidates (min-max: the best 1, the last of the pool 0, below it
  0), since cosines mean different things to different models and queries; a text match adds
  EXACT_LIFT (one edit: FUZZY_LIFT) plus STRENGTH × coverage × confidence, in tiers that do not
  overlap: exact matches, then one-edit ones, then the looks alone, and within a tier the sum of
  how they look and how strongly the text matched. A query whose words no picture shows ranks as
  the visual search does.
- `rrf`, reciprocal rank fusion: Σ 1 / (RRF_K + rank) over the two rankings. It needs no scale, but it
  throws the strength of each ranking away: an exact match ranked first by text only ties the visual
  first, which may be a picture the model is merely unsure about.

On the benchmark (docs/evaluation.md) the calibrated ranking keeps the text's hit@1 where rank
fusion halves it, and both leave the visual ranking of queries naming no text as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from retrieval.search.text_match import TextMatch

FUSIONS = ("calibrated", "rrf")
FUZZY_LIFT = 1.0
"""A one-edit match's lift on the calibrated scale (visual 0..1): above every picture found by its looks alone."""
STRENGTH = 0.5
"""× coverage × confidence (0..1): a sign reading just the words before a receipt that mentions them."""
EXACT_LIFT = FUZZY_LIFT + STRENGTH + 1.0
"""An exact match's: above every one-edit match too, whatever their looks (a one-edit match may be a
misreading, or another word: on the benchmark, letting good looks lift one over an exact match cost
exact queries 8 points of hit@1)."""
RRF_K = 60
"""Reciprocal rank fusion's constant (Cormack et al. 2009; what most search engines use)."""


@dataclass(frozen=True)
class Candidate:
    """An item found one way or both: its position in the view, its visual score, its text match."""

    position: int
    visual: float
    visual_rank: int | None
    """1-based in the visual ranking; None: not among the visual candidates."""
    text: TextMatch | None
    text_rank: int | None


def text_lift(match: TextMatch | None) -> float:
    """What a text match adds to the calibrated visual score (0 for none)."""
    if match is None:
        return 0.0
    return (EXACT_LIFT if match.exact else FUZZY_LIFT) + STRENGTH * match.score


def fuse(candidates: Sequence[Candidate], fusion: str) -> list[tuple[Candidate, float]]:
    """The candidates best first by `fusion` (one of FUSIONS), each with its fused score (ties: the visual score)."""
    if fusion == "rrf":
        scored = [(c, sum(1 / (RRF_K + rank) for rank in (c.visual_rank, c.text_rank) if rank is not None)) for c in candidates]
    else:
        pool = [c.visual for c in candidates if c.visual_rank is not None]
        best, last = (max(pool), min(pool)) if pool else (0.0, 0.0)
        spread = best - last
        scored = [(c, (min(1.0, max(0.0, (c.visual - last) / spread)) if spread > 0 else 1.0) + text_lift(c.text)) for c in candidates]
    return sorted(scored, key=lambda pair: (-pair[1], -pair[0].visual, pair[0].position))
