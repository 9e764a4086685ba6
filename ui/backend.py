"""What both faces of `tusou serve` answer from, the Gradio UI and the JSON API: one Searcher,
loaded once, that answers their threads side by side.

`Backend.searcher` is the one reference to the index being served. A handler reads it once and
uses what it read to the end, so replacing it is one assignment that no request sees half-done.
Queries use the model in batches (retrieval.search.encoder), and run their index searches and
catalog reads beside each other; `queue_depth` counts the requests waiting for the model or
using it, as /metrics reports it.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from retrieval.errors import TusouError
from retrieval.images import load_query_image
from retrieval.search.query import Query, QueryImage, strip_controls
from retrieval.search.searcher import Searcher, SearchResult
from retrieval.search.zero_shot import LabelScore, check_templates, parse_labels

MAX_LABELS = 200
"""More labels than this are refused: each is embedded with every template while the model is held."""


def checked_labels(labels: str, templates: Sequence[str] | None) -> tuple[list[str], tuple[str, ...] | None]:
    """Labels as typed (comma-separated) and templates (None: the default set), checked before any
    image is read. Control characters and unpaired surrogates are dropped as from a query: the
    tokenizer raises on the latter."""
    names = parse_labels(strip_controls(labels))
    if len(names) > MAX_LABELS:
        raise TusouError(f"最多 {MAX_LABELS} 个标签 (at most {MAX_LABELS} labels), 收到 {len(names)} 个")
    kept = [template for template in (strip_controls(t).strip() for t in templates or ()) if template]
    return names, check_templates(kept) if kept else None


class Backend:
    """The served Searcher (swap it by assigning `searcher`)."""

    def __init__(self, searcher: Searcher):
        self.searcher = searcher

    @property
    def queue_depth(self) -> int:
        return self.searcher.encoder.depth

    def picture(self, upload: QueryImage) -> Image.Image:
        """An upload decoded for the image tower; TusouError when the upload, or the index's image
        tower (other weights, or weights not on this machine), cannot be used."""
        model = self.searcher.image_model()
        return load_query_image(upload, min_size=model.image_size)

    def search(self, query: Query, k: int, offset: int = 0) -> list[SearchResult]:
        return self.searcher.search(query, int(k), offset)

    def label(self, picture: Image.Image, labels: Sequence[str], templates: Sequence[str] | None) -> list[LabelScore]:
        """The labels' probabilities for `picture` (decoded by `picture()`), labels and templates as
        `checked_labels` gives them."""
        return self.searcher.label(picture, labels, templates)
