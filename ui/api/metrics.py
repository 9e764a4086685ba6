"""/metrics: Prometheus' text format (version 0.0.4), written here (no client library needed).

Counted per endpoint (its route template, `ui` for everything of the Gradio UI): requests by
method and status, and a latency histogram from a request's arrival to the end of its response.
Read at scrape time: the index's items, the queue for the model and the batches it ran
(retrieval.search.encoder), the API requests in flight.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Callable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds in seconds; +Inf follows."""
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labels(**labels: str) -> str:
    """`{name="value",...}`, each value escaped as the format wants (backslash, quote, newline)."""
    escaped = {name: value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for name, value in labels.items()}
    return "{" + ",".join(f'{name}="{value}"' for name, value in escaped.items()) + "}"


class Metrics:
    """The counts since the server started. Updated and read on the event loop only: no lock."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, str]] = Counter()
        self.latency: dict[str, list[float]] = {}
        """Endpoint → the count in each bucket (not cumulative; +Inf last), then the sum of seconds."""

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests[endpoint, method, str(status)] += 1
        counts = self.latency.setdefault(endpoint, [0.0] * (len(BUCKETS) + 2))
        counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        counts[-1] += seconds

    def render(self, read: Iterable[tuple[str, str, str, float]]) -> str:
        """The exposition text: the request counters and histograms, then the values `read` at scrape
        time, as (name, type: gauge or counter, help, value)."""
        lines = ["# HELP tusou_requests_total Requests answered, by endpoint, method and status.",
                 "# TYPE tusou_requests_total counter"]
        lines += [f"tusou_requests_total{_labels(endpoint=e, method=m, status=s)} {n}" for (e, m, s), n in sorted(self.requests.items())]
        lines += ["# HELP tusou_request_duration_seconds From a request's arrival to the end of its response, by endpoint.",
                  "# TYPE tusou_request_duration_seconds histogram"]
        for endpoint, counts in sorted(self.latency.items()):
            running = 0.0
            for bound, count in zip([*map(str, BUCKETS), "+Inf"], counts):
                running += count
                lines.append(f"tusou_request_duration_seconds_bucket{_labels(endpoint=endpoint, le=bound)} {running:g}")
            lines.append(f"tusou_request_duration_seconds_sum{_labels(endpoint=endpoint)} {counts[-1]:.6f}")
            lines.append(f"tusou_request_duration_seconds_count{_labels(endpoint=endpoint)} {running:g}")
        for name, kind, meaning, value in read:
            lines += [f"# HELP {name} {meaning}", f"# TYPE {name} {kind}", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"


class MeasureRequests:
    """ASGI middleware: every HTTP request observed into `metrics` under `endpoint_of(scope)`, whatever
    answered it (a refusal by a limit or the key check too; 499 when the client left first)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, endpoint_of: Callable[[Scope], str]):
        self.app, self.metrics, self.endpoint_of = app, metrics, endpoint_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 499

        async def noted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noted)
        finally:
            self.metrics.observe(self.endpoint_of(scope), scope["method"], status, time.perf_counter() - started)
