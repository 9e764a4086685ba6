"""The core of tusou: model registry, encoders, the index on disk and the query layer."""

from retrieval.errors import TusouError
from retrieval.model import EmbeddingModel, load_model
from retrieval.query import Query
from retrieval.registry import DEFAULT_MODEL, MODELS
from retrieval.searcher import Searcher, SearchResult
from retrieval.zero_shot import DEFAULT_TEMPLATES, LabelScore, label_images

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TEMPLATES",
    "MODELS",
    "EmbeddingModel",
    "LabelScore",
    "Query",
    "SearchResult",
    "Searcher",
    "TusouError",
    "label_images",
    "load_model",
]
