"""Brace patterns as webdataset and img2dataset write shard names: `{000000..000009}.tar`, `{a,b}.tar`."""

from __future__ import annotations

import re

BRACE = re.compile(r"\{([^{}]*)\}")
RANGE = re.compile(r"(\d+)\.\.(\d+)")


def expand_braces(pattern: str) -> list[str]:
    """Every name the pattern stands for, in order; numeric ranges keep the first number's zero
    padding. Braces that are neither a range nor a list (`{x}`) are left as they are."""
    for found in BRACE.finditer(pattern):
        choices = _choices(found.group(1))
        if choices is not None:
            head, tail = pattern[: found.start()], pattern[found.end() :]
            return [name for choice in choices for name in expand_braces(head + choice + tail)]
    return [pattern]


def _choices(body: str) -> list[str] | None:
    numbers = RANGE.fullmatch(body)
    if numbers:
        first, last = numbers.groups()
        return [f"{n:0{len(first)}d}" for n in range(int(first), int(last) + 1)]
    return body.split(",") if "," in body else None
