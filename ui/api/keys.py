"""The key check in front of everything the server answers, once it has any key.

An API call sends `Authorization: Bearer KEY`. A browser cannot add that header to the Gradio
page's own requests, so the UI has a login form instead: /login takes the key once and sets an
HttpOnly, SameSite=Strict cookie holding a token derived from it (HMAC-SHA256 of a fixed text
under the key), which every later request of the page carries. The cookie is not the key, page
scripts cannot read it, other sites' pages cannot send it, and dropping the key from the
server's list ends its sessions. The cookie opens the UI and /docs only: /api/v1 and /metrics
want the header, so a page elsewhere can never spend a session on the API.

/healthz and the login page stay open (a load balancer's probe has no key). Keys and tokens are
compared as SHA-256 digests with hmac.compare_digest: constant time, whatever the lengths.
"""

from __future__ import annotations

import hashlib
import hmac
import html
from collections.abc import Callable, Sequence
from typing import Annotated

from fastapi import APIRouter, Form
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from ui.api.errors import error

SESSION = "tusou_session"
SESSION_DAYS = 30
OPEN_PATHS = frozenset({"/healthz", "/login", "/logout"})
CLIENT = "tusou.client"
"""The scope key naming who sent a request (a key's fingerprint), for the per-client limits."""
SESSION_TEXT = b"tusou ui session"


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


class Keys:
    """The server's keys, held as digests beside the digests of their session tokens."""

    def __init__(self, keys: Sequence[str]):
        self._entries = [(_digest(key).hex()[:12], _digest(key), _digest(self.session(key))) for key in keys]

    def __bool__(self) -> bool:
        return bool(self._entries)

    @staticmethod
    def session(key: str) -> str:
        """The login cookie's token for `key`."""
        return hmac.new(key.encode(), SESSION_TEXT, hashlib.sha256).hexdigest()

    def by_key(self, key: str) -> str | None:
        """The fingerprint of the key `key` is (who sent a request), None for a wrong one."""
        return self._match(_digest(key), 1)

    def by_session(self, token: str) -> str | None:
        """The fingerprint of the key a login cookie's token was made from."""
        return self._match(_digest(token), 2)

    def _match(self, wanted: bytes, column: int) -> str | None:
        """Every key is compared, so the time taken says nothing of which one matched."""
        matched = None
        for entry in self._entries:
            if hmac.compare_digest(wanted, entry[column]):
                matched = entry[0]
        return matched


def _bearer(headers: Headers) -> str | None:
    """The key an `Authorization` header carries ("" for another scheme), None without the header."""
    if "authorization" not in headers:
        return None
    scheme, _, credentials = headers["authorization"].partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


def _wants_page(scope: Scope, headers: Headers) -> bool:
    """A browser opening a page (not a script fetching data): sent to the login form, not refused."""
    return scope.get("method") == "GET" and "text/html" in headers.get("accept", "")


class RequireKey:
    """ASGI middleware: without a right key (or, on `page` paths, a session), 401 with one JSON line,
    or a browser is sent to /login."""

    def __init__(self, app: ASGIApp, keys: Keys, page: Callable[[str], bool]):
        self.app, self.keys, self.page = app, keys, page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.keys or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        key, page, token = _bearer(headers), self.page(scope["path"]), cookie_parser(headers.get("cookie", "")).get(SESSION)
        if key is not None:
            client = self.keys.by_key(key)
        else:
            client = self.keys.by_session(token) if page and token else None
        if client is not None:
            scope[CLIENT] = client
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        if page and key is None and _wants_page(scope, headers):
            return await RedirectResponse("/login", status_code=303)(scope, receive, send)
        reason = "wrong API key" if key else "this server needs an API key"
        await error(401, f"{reason}: send the header Authorization: Bearer KEY", {"WWW-Authenticate": "Bearer"})(scope, receive, send)


LOGIN_PAGE = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>tusou 图搜 · 登录</title>
<style>body{{font-family:system-ui,sans-serif;max-width:26rem;margin:5rem auto;padding:0 1rem}}
input{{width:100%;padding:.5rem;margin:.5rem 0;box-sizing:border-box}}button{{padding:.5rem 1.5rem}}.note{{color:#b00}}</style>
</head><body><h1>tusou 图搜</h1>
<form method="post" action="/login"><label for="key">API key（这台服务器的访问密钥 · this server's key）</label>
<input id="key" name="key" type="password" autocomplete="current-password" autofocus required>
<button type="submit">登录 (log in)</button></form><p class="note">{note}</p></body></html>"""


def login_router(keys: Keys) -> APIRouter:
    """/login (the form, and its answer) and /logout, for a server with keys."""
    router = APIRouter(include_in_schema=False)

    @router.get("/login")
    def form() -> HTMLResponse:
        return HTMLResponse(LOGIN_PAGE.format(note=""))

    @router.post("/login")
    def log_in(key: Annotated[str, Form(max_length=4096)] = "") -> Response:
        if keys.by_key(key) is None:
            return HTMLResponse(LOGIN_PAGE.format(note=html.escape("密钥不对 (wrong key)")), status_code=401)
        page = RedirectResponse("/", status_code=303)
        page.set_cookie(SESSION, Keys.session(key), max_age=SESSION_DAYS * 86400, httponly=True, samesite="strict")
        return page

    @router.get("/logout")
    def log_out() -> Response:
        page = RedirectResponse("/login", status_code=303)
        page.delete_cookie(SESSION, httponly=True, samesite="strict")
        return page

    return router
