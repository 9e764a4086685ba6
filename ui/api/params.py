"""The API's parameters: their names, types and limits. Values are read by the CLI's own converters
(ui.options) and checked by the library, so `tusou search` and /api/v1/search refuse the same
values in the same words; the API adds limits of its own (k, offset, text lengths, list lengths).

A name the endpoint does not take is refused (422), not ignored: a misspelt filter would
otherwise widen a search without a word.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException

from retrieval.errors import TusouError
from retrieval.search.query import DEDUPE_THRESHOLD, MATCHES, MAX_QUERY_CHARS, SORTS
from ui.options import number, one_of, parsed

MAX_K = 1000
MAX_OFFSET = 100_000
MAX_TEXT = MAX_QUERY_CHARS
"""Characters in any one text parameter (the query, a negative term, a filter): what a query is cut to."""
MAX_LABEL_TEXT = 20_000
MAX_VALUES = 100
"""Values of a repeated parameter (`not`, `in`)."""
THUMBNAIL_SIZES = (16, 1024)


def _refusal(reason: str) -> PydanticCustomError:
    """A validation error whose message is `reason` as it is (the handler names the parameter)."""
    return PydanticCustomError("tusou", "{reason}", {"reason": reason})


def read(convert: Callable[[str], Any]) -> BeforeValidator:
    """A validator running `convert` on the text a client sent; its words become the error's."""

    def validate(value: Any) -> Any:
        if not isinstance(value, str):  # a default, already a value
            return value
        try:
            return convert(value)
        except (argparse.ArgumentTypeError, TusouError) as exc:
            raise _refusal(str(exc)) from None

    return BeforeValidator(validate)


def text_of(limit: int) -> Callable[[str], str]:
    """Text of at most `limit` characters (the library cuts or refuses what it would not read anyway)."""

    def convert(text: str) -> str:
        if len(text) > limit:
            raise argparse.ArgumentTypeError(f"{len(text)} characters: give at most {limit}")
        return text

    return convert


def _at_most(values: list[str]) -> list[str]:
    if len(values) > MAX_VALUES:
        raise _refusal(f"{len(values)} values: give at most {MAX_VALUES}")
    return values


def _dedupe(text: str) -> float:
    """`dedupe` with no value (`?dedupe` or `dedupe=`) folds at the default threshold, as `--dedupe` alone does."""
    return DEDUPE_THRESHOLD if text == "" else parsed(float)(text)


Text = Annotated[str | None, read(text_of(MAX_TEXT))]
Texts = Annotated[list[Annotated[str, read(text_of(MAX_TEXT))]], AfterValidator(_at_most)]
Decimal = Annotated[float | None, read(parsed(float))]


class SearchParams(BaseModel):
    """`tusou search`'s options, by the names of its flags (`q` for the query): query parameters of
    GET /api/v1/search, form fields of POST. The attributes are the CLI's argparse destinations
    (ui.search_request.SearchOptions)."""

    query: Text = Field(None, alias="q", description="the text query (Chinese); with an image (POST), mixed with it")
    k: Annotated[int, read(number(int, 1, MAX_K))] = Field(10, description=f"results wanted, 1..{MAX_K}")
    offset: Annotated[int, read(number(int, 0, MAX_OFFSET))] = Field(0, description="results skipped first (the next page)")
    negatives: Texts = Field([], alias="not", description="push down images that look like this (repeatable)")
    weight: Decimal = Field(None, description="the image's share when mixed with a text query, 0..1 (default 0.5)")
    min_score: Decimal = Field(None, description="drop results scoring below this (-1..1)")
    dedupe: Annotated[float | None, read(_dedupe)] = Field(
        None, description=f"fold near-duplicates at this stored-vector cosine (empty: {DEDUPE_THRESHOLD})")
    match: Annotated[str | None, read(one_of(MATCHES))] = Field(
        None, description="visual, text or both (default: both when the index has text read, else visual)")
    after: Text = Field(None, description="taken on or after (2024, 2024-06, 2024-06-01, 2024-06-01T08:30)")
    before: Text = Field(None, description="taken before")
    folders: Texts = Field([], alias="in", description="only images in this folder or below (repeatable: any of them)")
    types: Text = Field(None, alias="type", description="only these file types, e.g. jpg,png")
    camera: Text = Field(None, description="only photos whose camera make or model contains this")
    near: Text = Field(None, description="only photos taken within KM km of LAT,LON: LAT,LON,KM")
    sort: Annotated[str, read(one_of(SORTS))] = Field("score", description="score, newest or oldest (among the best by score)")


class LabelParams(BaseModel):
    labels: Annotated[str, read(text_of(MAX_LABEL_TEXT))] = Field(description="comma-separated labels, e.g. 猫,狗,老虎")
    templates: Annotated[str | None, read(text_of(MAX_TEXT))] = Field(
        None, description="prompt templates separated by |, each with {} (default: a Chinese set)")


class ThumbnailParams(BaseModel):
    size: Annotated[int, read(number(int, *THUMBNAIL_SIZES))] = Field(256, description="the longest side, in pixels")


def names_of(model: type[BaseModel] | None) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()} if model else set()


def accepts(model: type[BaseModel] | None = None, *, form: bool = False, files: tuple[str, ...] = ()) -> Any:
    """A dependency refusing any parameter the endpoint does not take: query parameters of `model`
    (or none), or with `form`, form fields of `model` and `files` (and no query parameters)."""
    fields = names_of(model) | set(files)
    taken = ", ".join(sorted(fields)) or "none"

    async def check(request: Request) -> None:
        if form and request.query_params:
            name = next(iter(request.query_params))
            raise HTTPException(422, f"unknown parameter {name!r}: this endpoint takes form fields ({taken}), not query parameters")
        sent = (await request.form()).keys() if form else request.query_params.keys()
        unknown = [name for name in sent if name not in fields]
        if unknown:
            raise HTTPException(422, f"unknown {'form field' if form else 'parameter'} {unknown[0]!r}: this endpoint takes {taken}")

    return Depends(check)
