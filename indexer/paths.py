"""What the PATH arguments of `tusou index` name: list files and brace patterns expanded.

Kept apart from the scan (indexer.sources) and light to import, so the CLI checks the PATHs
before it loads any model: a mistyped folder is one line at once, not after the model loads.
"""

from __future__ import annotations

import os
import posixpath

from indexer.braces import expand_braces
from retrieval.errors import TusouError
from retrieval.locations import Unreadable, is_url, read_bytes

LIST_PREFIX = "list:"


def expand_paths(specs: list[str]) -> list[str]:
    """List files and brace patterns replaced by what they name.

    A local path on the command line that does not exist is the user's error; one in a list
    file is skipped with its reason like any unreadable file (lists made elsewhere go stale).
    """
    expanded: list[str] = []
    for spec in specs:
        if spec.startswith(LIST_PREFIX):
            expanded += [name for line in _list_lines(spec[len(LIST_PREFIX) :]) for name in _expand_name(line)]
            continue
        names = _expand_name(spec)
        for name in names:
            if not is_url(name) and not os.path.lexists(name):
                raise TusouError(f"no such file or folder: {name}")
        expanded += names
    return expanded


def _expand_name(spec: str) -> list[str]:
    return [spec] if not is_url(spec) and os.path.lexists(spec) else expand_braces(spec)


def _list_lines(location: str) -> list[str]:
    """The entries of a list file, relative ones made relative to the list's own folder."""
    if not is_url(location):
        location = os.path.abspath(location)
    try:
        text = read_bytes(location).decode("utf-8")
    except Unreadable as exc:
        raise TusouError(f"cannot read list file {location}: {exc}") from None
    except UnicodeDecodeError:
        raise TusouError(f"list file {location} is not UTF-8 text") from None
    join = posixpath.join if is_url(location) else os.path.join
    base = posixpath.dirname(location) if is_url(location) else os.path.dirname(location)
    lines = [line.strip() for line in text.splitlines()]
    return [line if is_url(line) or os.path.isabs(line) else join(base, line) for line in lines if line and not line.startswith("#")]
