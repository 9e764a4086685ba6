"""Byte sizes as people write and read them ('800M', '1.5 GB'), for flags and reports."""

from __future__ import annotations

import re

from retrieval.errors import TusouError


def parse_size(text: str, flag: str = "--max-index-memory") -> int:
    """'800M', '1.5G', '2GiB', '1000000' → bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text).lower())
    if not match:
        raise TusouError(f"{flag} {text!r}: give a size such as 800M, 4G or 1.5G")
    number, unit = float(match.group(1)), match.group(2)
    return int(number * 1024 ** " kmgt".index(unit or " "))


def format_size(size: float) -> str:
    if size < 1024:
        return f"{size:.0f} B"
    for unit in ("KB", "MB", "GB"):
        size /= 1024
        if size < 1024:
            return f"{size:.1f} {unit}"
    return f"{size / 1024:.1f} TB"
