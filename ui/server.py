"""`tusou serve` as one ASGI app under uvicorn: the JSON API (/api/v1), /healthz and /metrics, the
Gradio UI at /, OpenAPI at /docs and /openapi.json, and the guards in front of them all.

From the outside in: every request is measured (ui.api.metrics), then keyed (ui.api.keys), then
its body is bounded (on the server's own routes; the UI's uploads keep Gradio's own limit), then
an API request takes one of its client's slots (ui.api.limits). SIGTERM stops accepting, lets
what is in flight finish (up to DRAIN_SECONDS: a browser's open event stream would wait forever),
and exits 0.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Sequence
from types import FrameType
from typing import NoReturn

import gradio as gr
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Scope

from retrieval.errors import TusouError
from retrieval.store.manifest import tool_version
from ui.api import errors
from ui.api.errors import JSON, error
from ui.api.keys import Keys, RequireKey, login_router
from ui.api.limits import MAX_BODY_BYTES, MAX_UPLOAD_BYTES, BodyLimit, ClientSlots
from ui.api.metrics import CONTENT_TYPE, MeasureRequests, Metrics
from ui.api.params import accepts
from ui.api.routes import PREFIX, api_router
from ui.backend import Backend
from ui.watch import IndexingState

DRAIN_SECONDS = 30
MAX_REQUEST_HEAD = 64 * 1024
"""The request line and headers: a long query in a URL reaches the API (and its own 422), where
h11's default 16 KB would answer a bare 400 first."""
OWN_PATHS = frozenset({"/healthz", "/metrics", "/login", "/logout", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def is_api(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


def is_page(path: str) -> bool:
    """What a browser opens: a login cookie stands for the key. The API and /metrics want the header."""
    return not (is_api(path) or path == "/metrics")


def is_own(path: str) -> bool:
    """Routes of this app, not of the Gradio UI mounted under it."""
    return is_api(path) or path in OWN_PATHS


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound and listening now: a port in use is one line before the model loads
    (and a client that comes early waits in the backlog instead of being refused)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise TusouError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def service(backend: Backend, ui: gr.Blocks, keys: Sequence[str], client_concurrency: int,
            indexing: IndexingState | None = None) -> ASGIApp:
    """The whole server as one ASGI app, over `backend` (shared by the API and `ui`); `indexing`: the
    folder watcher's state, for /api/v1/info (None: no watcher)."""
    app = FastAPI(title="tusou 图搜", version=tool_version(), docs_url="/docs", redoc_url=None, default_response_class=JSON,
                  summary="Search images with Chinese text or with images: the JSON API of `tusou serve` (docs/api.md).")
    errors.install(app)
    guard = Keys(keys)
    routers = [api_router(backend, indexing), *([login_router(guard)] if guard else [])]
    for router in routers:
        app.include_router(router)
    metrics = Metrics()

    @app.get("/healthz", dependencies=[accepts()], summary="whether the server answers (open without a key)")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/metrics", dependencies=[accepts()], response_class=Response, summary="Prometheus metrics",
             responses={200: {"content": {CONTENT_TYPE: {}}}})
    async def exposition() -> Response:
        batches = backend.searcher.encoder.stats
        read = [("tusou_index_items", "gauge", "Items in the served index.", len(backend.searcher)),
                ("tusou_queue_depth", "gauge", "Queries waiting for the model or using it.", backend.queue_depth),
                ("tusou_query_batches_total", "counter", "Batches the query towers ran.", batches.batches),
                ("tusou_query_batched_requests_total", "counter", "Encoding requests in those batches.", batches.requests),
                ("tusou_api_requests_in_flight", "gauge", "API requests being answered.", slots.total)]
        return Response(metrics.render(read), media_type=CONTENT_TYPE)

    @app.api_route("/api/{rest:path}", methods=METHODS, include_in_schema=False)
    async def unknown(request: Request) -> JSON:
        allowed = sorted({method for route in own if route.matches(request.scope)[0] == Match.PARTIAL for method in route.methods})
        if allowed:
            return error(405, f"{request.method} is not allowed on {request.url.path}: use {', '.join(allowed)}", {"Allow": ", ".join(allowed)})
        return error(404, f"no endpoint {request.url.path}: see /docs for those under {PREFIX}")

    # the server's own routes, the catch-all last: what names an endpoint in /metrics, and a 405's methods
    own = [route for router in routers for route in router.routes] + [route for route in app.routes if getattr(route, "methods", None)]

    def endpoint_of(scope: Scope) -> str:
        return next((route.path for route in own if route.matches(scope)[0] != Match.NONE), "ui")

    gr.mount_gradio_app(app, ui, path="/", show_error=False, max_file_size=MAX_UPLOAD_BYTES)
    # Mounted, Gradio never marks the Blocks launched and running, as `launch` does; but it checks that
    # a file a request names was uploaded to it only once launched (processing_utils._check_allowed:
    # else any server path is taken, tests/test_ui_hostile.py), and it sends its event streams'
    # heartbeats only while running.
    ui.has_launched = ui.is_running = True
    slots = ClientSlots(app, client_concurrency, is_api)
    return MeasureRequests(RequireKey(BodyLimit(slots, MAX_BODY_BYTES, is_own), guard, is_page), metrics, endpoint_of)


def _drained(signum: int, frame: FrameType | None) -> NoReturn:
    """uvicorn answers SIGTERM by draining, then raises it again for its default action (death by the
    signal); restored as the handler by then, this makes it a clean exit 0."""
    raise SystemExit(0)


def server(app: ASGIApp) -> uvicorn.Server:
    """uvicorn as `tusou serve` runs it (bench/serve.py runs the same in a thread)."""
    return uvicorn.Server(uvicorn.Config(app, http="h11", lifespan="on", log_level="warning", access_log=False,
                                         timeout_graceful_shutdown=DRAIN_SECONDS, h11_max_incomplete_event_size=MAX_REQUEST_HEAD))


def run(app: ASGIApp, listener: socket.socket) -> None:
    """Serve `app` on `listener` until SIGTERM (drained, exit 0) or Ctrl-C."""
    signal.signal(signal.SIGTERM, _drained)
    server(app).run(sockets=[listener])
