"""How an option's value is read from text: one set of converters for `tusou`'s flags and the JSON
API's parameters, so both refuse the same values in the same words.

Each converter raises argparse.ArgumentTypeError with the line a user reads; argparse prefixes
it with the flag (`argument -k: ...`), the API with the parameter's name (`k: ...`). Light on
purpose: `tusou --help` imports this.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any


def parsed(kind: type[int] | type[float]) -> Callable[[str], Any]:
    """A `kind` read from text, nothing more (Query checks the ranges of its own numbers); the words
    are argparse's own for a bare `type=float`."""

    def convert(text: str) -> int | float:
        try:
            return kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None

    return convert


def number(kind: type[int] | type[float], low: int, high: int | None = None, *, above: bool = False) -> Callable[[str], Any]:
    """A `kind` from `low` (excluded when `above`) up to `high`. Anything else is one line, read
    before anything loads."""
    what = "a number" if kind is float else "an integer"
    rule = f"{what} from {low} to {high}" if high is not None else f"{what} {'above' if above else 'of at least'} {low}"
    read = parsed(kind)

    def convert(text: str) -> int | float:
        value = read(text)
        if not (math.isfinite(value) and (value > low if above else value >= low) and (high is None or value <= high)):
            raise argparse.ArgumentTypeError(f"{text} is out of range: give {rule}")
        return value

    return convert


def one_of(choices: Sequence[str]) -> Callable[[str], str]:
    """One of `choices`, in the words argparse uses for `choices=` (which `--help` still shows)."""

    def convert(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(map(repr, choices))})")
        return text

    return convert
