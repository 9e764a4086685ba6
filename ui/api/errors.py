"""Every refusal is one line of JSON, `{"error": "..."}`, with a 4xx status: the words a user reads,
never a traceback (and none of Starlette's or pydantic's nested detail)."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from retrieval.errors import TusouError

log = logging.getLogger("tusou.api")


class JSON(JSONResponse):
    """JSON as UTF-8, its Chinese unescaped. A file name that is not valid UTF-8 reaches Python as lone
    surrogates, which UTF-8 cannot encode: written as `\\udcff` they are that string's JSON escape
    (as the CLI's `--json` writes them)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8", "backslashreplace")


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSON:
    return JSON({"error": " ".join(message.split())}, status_code=status, headers=headers)


def validation_message(exc: RequestValidationError) -> str:
    """The first mistake, named by its parameter: the converters' own words (ui.options), else pydantic's."""
    first = exc.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if not isinstance(part, int)]
    name = location[1] if len(location) > 1 else (location[0] if location else "request")
    return f"{name}: {'required' if first.get('type') == 'missing' else first.get('msg', 'invalid')}"


def install(app: FastAPI) -> None:
    """The app's refusals as one-line JSON: a bad parameter (422), a TusouError from the library (422:
    the request cannot be answered as asked, and the line says why), Starlette's own (400, 404,
    405, 413, ...) and anything unforeseen (500, its traceback logged, not sent)."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSON:
        return error(422, validation_message(exc))

    @app.exception_handler(TusouError)
    async def refused(request: Request, exc: TusouError) -> JSON:
        return error(422, str(exc))

    @app.exception_handler(HTTPException)
    async def http(request: Request, exc: HTTPException) -> JSON:
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unforeseen(request: Request, exc: Exception) -> JSON:
        log.exception("%s %s failed", request.method, request.url.path)
        return error(500, f"internal error ({type(exc).__name__}): the server's log has the details")
