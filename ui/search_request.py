"""A search as `tusou search` and /api/v1/search take it: its options checked into a Query, its
results as `--json` gives them. One path for both, so they accept, refuse and answer alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from retrieval.errors import TusouError
from retrieval.search.filters import make_filters
from retrieval.search.query import IMAGE_WEIGHT, Query, QueryImage

if TYPE_CHECKING:  # the searcher brings the model code: a mistake is reported without it
    from retrieval.search.searcher import SearchResult


class SearchOptions(Protocol):
    """The options of a search by the names of `tusou search`'s argparse destinations: the CLI's
    Namespace has them, and so has the API's parameter model."""

    query: str | None
    weight: float | None
    negatives: Sequence[str]
    min_score: float | None
    dedupe: float | None
    match: str | None
    after: str | None
    before: str | None
    folders: Sequence[str]
    types: str | None
    camera: str | None
    near: str | None
    sort: str


def search_query(options: SearchOptions, image: QueryImage | None) -> Query:
    """The Query the options ask for, with `image` as its reference image (None: a text search).
    Every mistake is a one-line TusouError before the model is needed."""
    if options.weight is not None and (options.query is None or image is None):
        raise TusouError("--weight mixes a text query with --image: give both, or leave --weight out")
    filters = make_filters(options.after, options.before, options.folders, options.types, options.camera, options.near)
    return Query(text=options.query, image=image, weight=IMAGE_WEIGHT if options.weight is None else options.weight,
                 negatives=options.negatives, min_score=options.min_score, dedupe=options.dedupe, filters=filters,
                 sort=options.sort, match=options.match)


def result_rows(query: Query, results: Sequence[SearchResult]) -> list[dict]:
    """The results as `--json` prints them (one a line) and the API returns them (in a list)."""
    return [result.to_dict(query.dedupe is not None) for result in results]
