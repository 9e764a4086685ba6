"""Offline index builds: image sources, the decode/embed pipeline, the FAISS build."""

from indexer.build import BuildSummary, build_index
from indexer.plan import BuildPlan

__all__ = ["BuildPlan", "BuildSummary", "build_index"]
