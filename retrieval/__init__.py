"""The core of tusou: model registry, encoders, the index on disk and the query layer.

The public names load on first use (PEP 562), so `import retrieval` or `from retrieval.errors
import TusouError` costs no torch, transformers, open_clip or FAISS import: `tusou --help`
and a mistyped flag answer at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from retrieval.lazy import lazy_exports

_EXPORTS = {
    "TusouError": "retrieval.errors",
    "DEFAULT_MODEL": "retrieval.models.registry",
    "MODELS": "retrieval.models.registry",
    "EmbeddingModel": "retrieval.models.model",
    "load_model": "retrieval.models.model",
    "Query": "retrieval.search.query",
    "Searcher": "retrieval.search.searcher",
    "SearchResult": "retrieval.search.searcher",
    "DEFAULT_TEMPLATES": "retrieval.search.zero_shot",
    "LabelScore": "retrieval.search.zero_shot",
    "label_images": "retrieval.search.zero_shot",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from retrieval.errors import TusouError
    from retrieval.models.model import EmbeddingModel, load_model
    from retrieval.models.registry import DEFAULT_MODEL, MODELS
    from retrieval.search.query import Query
    from retrieval.search.searcher import Searcher, SearchResult
    from retrieval.search.zero_shot import DEFAULT_TEMPLATES, LabelScore, label_images


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
