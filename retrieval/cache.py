"""Where tusou keeps what it can make again (features of a benchmark, ONNX exports): ~/.cache/tusou."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$XDG_CACHE_HOME/tusou`, else `~/.cache/tusou`."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tusou"
