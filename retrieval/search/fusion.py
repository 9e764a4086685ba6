"""One ranking from two: the visual search's candidates and the items whose read text matches.

A text query on an index with text read (`tusou index --ocr`) searches both ways (`match="both"`).
Each candidate has its visual score (its cosine to the query vector, less the negative terms' push:
retrieval.search.query.rank; computed exactly from its stored vector when only its text found it),
and a text match or none (retrieval.search.text_match: exact or one edit away, with coverage ×
confidence). Two ways to merge them, measured on the OCR benchmark set (docs/evaluation.md):

- `calibrated` (the default): the visual score plus a text match's evidence put on the cosine scale,
  TEXT_WEIGHT × (EXACT_FLOOR + (1 − EXACT_FLOOR) × coverage × confidence) for an exact match, a
  FUZZY_SHARE of that for a one-edit match. A match that is sure (exact, read confidently) lifts an
  image above what the model merely finds similar, and the visual score still orders the matches
  among themselves and everything else.
- `rrf`, reciprocal rank fusion: Σ 1 / (RRF_K + rank) over the two rankings. It needs no scale, but it
  throws the strength of each ranking away: an exact match ranked first by text only ties the visual
  first, which may be a picture the model is merely unsure about.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from retrieval.search.text_match import TextMatch

FUSIONS = ("calibrated", "rrf")
TEXT_WEIGHT = 1.0
"""A sure exact match's lift, in cosine units: above the whole spread of a CLIP model's text-image
cosines (about 0.1-0.4), so it outranks what only looks alike."""
EXACT_FLOOR = 0.5
"""The share of TEXT_WEIGHT that any exact match gets, however small a piece of its line the query is."""
FUZZY_SHARE = 0.5
"""A one-edit match's lift against an exact one's: it may be a misreading, or another word."""
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
    """What a text match adds to the visual score (`calibrated`)."""
    if match is None:
        return 0.0
    lift = TEXT_WEIGHT * (EXACT_FLOOR + (1 - EXACT_FLOOR) * match.score)
    return lift if match.exact else FUZZY_SHARE * lift


def fused_score(candidate: Candidate, fusion: str) -> float:
    if fusion == "calibrated":
        return candidate.visual + text_lift(candidate.text)
    return sum(1 / (RRF_K + rank) for rank in (candidate.visual_rank, candidate.text_rank) if rank is not None)


def fuse(candidates: Sequence[Candidate], fusion: str) -> list[tuple[Candidate, float]]:
    """The candidates best first by `fusion` (one of FUSIONS), each with its fused score (ties: the visual score)."""
    scored = [(candidate, fused_score(candidate, fusion)) for candidate in candidates]
    return sorted(scored, key=lambda pair: (-pair[1], -pair[0].visual, pair[0].position))
