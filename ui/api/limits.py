"""Limits on what one request, and one client, may hold of the server: the size of a request's body
and how many of a client's requests are in flight at once. Each broken limit is a 4xx with one
JSON line (413, 429); the request is refused before it costs the model anything.

A client is its API key (ui.api.keys) when the server has keys, else its address.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ui.api.errors import error
from ui.api.keys import CLIENT

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
"""The largest image a request may send, to the API or to the UI."""
MAX_BODY_BYTES = MAX_UPLOAD_BYTES + 64 * 1024
"""An image of the largest size and the multipart form around it."""


class BodyTooLarge(HTTPException):
    """Raised out of `receive` once a body without a declared length passes the limit; an HTTPException,
    so FastAPI passes it through its body parsing to the app's handler (one JSON line, 413)."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body over {MAX_UPLOAD_BYTES >> 20} MB: send a smaller image")


class BodyLimit:
    """ASGI middleware: at most `limit` bytes of body on the paths `applies` names. A declared
    Content-Length over it is refused before a byte is read; a chunked body when it gets there."""

    def __init__(self, app: ASGIApp, limit: int, applies: Callable[[str], bool]):
        self.app, self.limit, self.applies = app, limit, applies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.applies(scope["path"]):
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            return await error(413, BodyTooLarge(self.limit).detail)(scope, receive, send)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


class ClientSlots:
    """ASGI middleware: at most `limit` requests of one client in flight on the paths `applies` names;
    one more is refused at once (429, retry after a second). Runs on the event loop only, so its
    counts need no lock."""

    def __init__(self, app: ASGIApp, limit: int, applies: Callable[[str], bool]):
        self.app, self.limit, self.applies = app, limit, applies
        self.in_flight: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.in_flight.values())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.applies(scope["path"]):
            return await self.app(scope, receive, send)
        client = scope.get(CLIENT) or (scope.get("client") or ("unknown",))[0]
        if self.in_flight[client] >= self.limit:
            message = f"too many requests at once: at most {self.limit} in flight per client"
            return await error(429, message, {"Retry-After": "1"})(scope, receive, send)
        self.in_flight[client] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight[client] -= 1
            if not self.in_flight[client]:
                del self.in_flight[client]
