"""Offline index builds: image sources, the decode/embed pipeline, the FAISS build.

`build_index` and `BuildSummary` load on first use (PEP 562), so importing one module of
this package (indexer.sources, say) does not first import the whole build, and torch with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["BuildSummary", "build_index"]

if TYPE_CHECKING:
    from indexer.build import BuildSummary, build_index


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'indexer' has no attribute {name!r}")
    from indexer import build

    return getattr(build, name)
