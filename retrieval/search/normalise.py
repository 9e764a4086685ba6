"""Text as people type it, folded so that what they type finds what an image says.

One function for the text read from images and for queries alike, so the two can only agree:
NFKC (full-width letters, digits and punctuation become half-width), case folded, traditional
characters folded onto simplified ones, and everything but letters, marks and digits dropped
(whitespace, punctuation and symbols: `010-8888 6666` and `01088886666` are one text).

Traditional → simplified is OpenCC's table (the `opencc` package: OpenCC's own binding, with its
dictionaries), applied one character at a time. OpenCC's phrase conversion depends on context
(`乾` alone becomes `干`, inside `乾隆` it stays), which would make a query that is a piece of a
line fold differently from the line itself; a character always folding to the same character
keeps every substring of a folded line the folding of a substring.
"""

from __future__ import annotations

import functools
import unicodedata

from retrieval.errors import TusouError

KEPT = frozenset("LMN")
"""Unicode major categories that matching keeps: letters, marks, numbers."""
OPENCC_FIX = "pip install 'opencc>=1.1'"


class _Simplified(dict):
    """Code point → its simplified form, looked up in OpenCC on first sight (str.translate's table)."""

    def __init__(self, convert):
        super().__init__()
        self._convert = convert

    def __missing__(self, point: int) -> str:
        converted = self._convert(chr(point))
        self[point] = folded = converted if len(converted) == 1 else chr(point)
        return folded


@functools.cache
def _simplified() -> _Simplified:
    try:
        import opencc
    except ImportError:
        raise TusouError(f"matching the text in images needs OpenCC's Python package: {OPENCC_FIX}") from None
    return _Simplified(opencc.OpenCC("t2s").convert)


def normalise(text: str) -> str:
    """`text` folded for matching: NFKC, case folded, traditional → simplified, only letters, marks and digits."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(c for c in folded if unicodedata.category(c)[0] in KEPT)
    return kept.translate(_simplified())
