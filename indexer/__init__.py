"""Offline index builds: image sources, the decode/embed pipeline, the FAISS build."""

from indexer.build import BuildSummary, build_index

__all__ = ["BuildSummary", "build_index"]
