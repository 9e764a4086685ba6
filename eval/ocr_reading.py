"""How well the OCR reads the benchmark's pictures, against the text they were drawn with.

Both sides are folded as search folds them (retrieval.search.normalise), because what counts is
whether the text can be found: a line is read exactly when its folded text is a piece of one
folded line the OCR returned (two drawn lines read as one still count); character accuracy is
1 - (edits to the best-matching piece of one OCR line) / characters, summed over lines. Lines of
20 px and more (the size the search goals are set for) are also scored on their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from retrieval.search.normalise import normalise

LARGE_PX = 20


def piece_distance(pattern: str, text: str) -> int:
    """The fewest edits turning `pattern` into some piece of `text` (Sellers' algorithm)."""
    previous = list(range(len(pattern) + 1))  # column for an empty text: every character inserted
    best = previous[-1]
    for char in text:
        current = [0]  # a piece may start anywhere: free
        for i, wanted in enumerate(pattern, 1):
            current.append(min(previous[i] + 1, current[i - 1] + 1, previous[i - 1] + (wanted != char)))
        best = min(best, current[-1])
        previous = current
    return best


def score_reading(pictures: Iterable[Mapping], read: Mapping[str, Sequence[str]]) -> dict:
    """Exact-read rate and character accuracy of the lines drawn in `pictures` (images.jsonl rows),
    given the lines `read` in each (by picture name); and the lines read in text-free photos."""
    totals = {"all": [0, 0, 0, 0], "large": [0, 0, 0, 0]}  # lines, exact, characters, edits
    photos = photo_lines = 0
    for picture in pictures:
        found = [normalise(text) for text in read.get(picture["name"], ())]
        if not picture["lines"]:
            photos += 1
            photo_lines += len(found)
            continue
        for line in picture["lines"]:
            wanted = normalise(line["text"])
            edits = min([piece_distance(wanted, text) for text in found] or [len(wanted)])
            for group in ("all", "large") if line["size"] >= LARGE_PX else ("all",):
                counts = totals[group]
                counts[0] += 1
                counts[1] += edits == 0
                counts[2] += len(wanted)
                counts[3] += min(edits, len(wanted))
    scores = {}
    for group, (lines, exact, chars, edits) in totals.items():
        suffix = "" if group == "all" else f"_{LARGE_PX}px"
        scores |= {f"lines{suffix}": lines, f"exact_read{suffix}": exact / max(1, lines), f"char_accuracy{suffix}": 1 - edits / max(1, chars)}
    return scores | {"photos": photos, "lines_per_photo": photo_lines / max(1, photos)}
