"""Which items show a text query in their images: exact pieces of a line, or one OCR mistake away.

A query is folded as the lines were (retrieval.search.normalise). A line matches exactly when its
folded text holds the folded query. A query of FUZZY_FROM (4) or more characters also matches a
line holding a piece within one edit of it (one character substituted, inserted or deleted),
because OCR misreads a character now and then.

Candidates for a one-edit match cannot be missed: split the query into halves; one edit touches
at most one of them (an insertion between the halves touches neither), so the other half stands
unchanged, in order, inside the matching piece of the line. The lines holding either half exactly
(the catalog's trigram index answers that) hold every one-edit match; each candidate is then
checked for real: does some piece of it equal one of the query's one-edit variants?

Ranking: exact matches before one-edit ones; within each, by score = coverage × confidence, where
coverage is the share of the line the query accounts for (a sign reading just `老王火锅` before a
receipt line mentioning it) and confidence the OCR's own; an item counts once, by its best line.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from dataclasses import dataclass

from retrieval.search.filters import Filters
from retrieval.search.normalise import normalise
from retrieval.store.text_lines import best_lines, line_texts

FUZZY_FROM = 4
"""Folded query length from which one edit is forgiven (a shorter query would match nearly anything)."""


@dataclass(frozen=True)
class TextMatch:
    """An item found by the text in its image, with the line that matched best."""

    item: int
    text: str
    """The line as the OCR read it."""
    box: list[list[float]]
    """The line's corners, [[x, y] × 4] in the original image's pixels."""
    confidence: float
    exact: bool
    score: float
    """coverage × confidence, in 0..1 (see the module's docstring)."""

    def to_dict(self) -> dict:
        return {"text": self.text, "box": self.box, "confidence": round(self.confidence, 4)}


SCORE = ("(CASE WHEN instr(norm, ?) > 0 THEN 2 WHEN within_one_edit(norm, ?) THEN 0 END)"
         " + min(1.0, ? * 1.0 / max(length(norm), 1)) * confidence")
"""A line's score in SQL: coverage × confidence (0..1), plus 2 for an exact match so that exact
matches come first; NULL (not counted) for a line neither holding the query nor one edit from it
(within_one_edit, registered on every catalog connection, runs only for lines not holding it)."""


def match_text(db: sqlite3.Connection, query: str, filters: Filters | None = None, limit: int | None = None) -> list[TextMatch]:
    """The items (passing `filters`) whose read text matches `query`, best first, at most `limit`."""
    folded = normalise(query)
    if not folded:
        return []
    pieces = [folded[: len(folded) // 2], folded[len(folded) // 2 :]] if len(folded) >= FUZZY_FROM else [folded]
    ranked = best_lines(db, pieces, SCORE, [folded, folded, len(folded)], filters, limit)
    lines = line_texts(db, [line_id for _, line_id, _ in ranked])
    return [TextMatch(item, *lines[line_id], score >= 2, score - 2 * (score >= 2)) for item, line_id, score in ranked]


def within_one_edit(text: str, folded: str) -> bool:
    """Whether a piece of `text` is one edit from `folded` (a folded query of FUZZY_FROM or more
    characters; a shorter one is never forgiven an edit)."""
    return len(folded) >= FUZZY_FROM and _one_edit(folded).search(text) is not None


@functools.lru_cache(maxsize=256)
def _one_edit(folded: str) -> re.Pattern[str]:
    """A pattern finding any piece of a line within one edit of `folded`: each character deleted,
    substituted by any character, or any character inserted between two."""
    quoted = [re.escape(c) for c in folded]
    n = len(quoted)
    variants = ["".join(quoted[:i] + quoted[i + 1 :]) for i in range(n)]
    variants += ["".join(quoted[:i] + ["."] + quoted[i + 1 :]) for i in range(n)]
    variants += ["".join(quoted[:i] + ["."] + quoted[i:]) for i in range(1, n)]
    return re.compile("|".join(dict.fromkeys(variants)), re.DOTALL)
