"""Offline index builds: image sources, the decode/embed pipeline, the FAISS build.

The public names load on first use (PEP 562), so importing one module of this package
(indexer.sources, say) does not first import the whole build, and torch with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from retrieval.lazy import lazy_exports

_EXPORTS = {"BuildSummary": "indexer.build", "build_index": "indexer.build"}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from indexer.build import BuildSummary, build_index

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
