"""The query towers shared by concurrent queries: requests that arrive together run as one batch.

A server answers many clients at once, but the model is one: a fast tokenizer used from two
threads at once fails ("Already borrowed"), and two forward passes side by side only split the
cores. So the model runs one batch at a time, and the requests that wait for it, or arrive within
`window` seconds of the first, go through it together: one forward pass over eight queries costs
less than eight (on two cores, a taiyi-size server answers 1.6-1.9× the queries a second of one
at a time: bench/serve.py).

There is no thread of its own: the first caller that finds no batch being led leads one. It waits
out the window and for the model, takes what is queued then (oldest first, up to `max_batch`), runs
it and hands each caller its rows; a caller whose request was not in that batch leads the next. A
batch that fails is run again one request at a time, so one bad request fails alone.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # light, so that `tusou serve --help` can show MAX_BATCH
    import numpy as np
    from PIL import Image

    from retrieval.models.model import EmbeddingModel

WINDOW_SECONDS = 0.002
"""How long the first request of a batch waits for others: a few ms against a text tower's 10-100."""
MAX_BATCH = 32
"""Requests in one batch at most, unless `tusou serve --max-batch` says otherwise."""


@dataclass(eq=False)
class _Request:
    kind: str
    """`texts` or `images`: which tower, and the EmbeddingModel method that runs it."""
    items: Sequence
    rows: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class BatchStats:
    """Batches run and requests in them, for /metrics (read without a lock: counters only grow)."""

    batches: int = 0
    requests: int = 0
    sizes: deque[int] = field(default_factory=lambda: deque(maxlen=256))
    """The last batches' request counts, for a test or a benchmark to look at."""

    def add(self, size: int) -> None:
        self.batches += 1
        self.requests += size
        self.sizes.append(size)


class QueryEncoder:
    """`model`'s two towers for queries, batched across threads; `max_batch=1` runs each alone."""

    def __init__(self, model: EmbeddingModel, max_batch: int = 1, window: float = WINDOW_SECONDS):
        self.model = model
        self.max_batch = max(1, int(max_batch))
        self.window = window if self.max_batch > 1 else 0.0
        self.stats = BatchStats()
        self._queue: list[_Request] = []
        self._changed = threading.Condition()
        self._leading = False
        self._model = threading.Lock()
        self._waiting = 0

    @property
    def depth(self) -> int:
        """Requests waiting for the model or using it."""
        return self._waiting

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of `texts` (at least one), one row each, as `model.encode_texts` gives them."""
        return self._run(_Request("texts", list(texts)))

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Unit vectors of decoded `images` (at least one), one row each, as `model.encode_images` gives them."""
        return self._run(_Request("images", list(images)))

    @contextmanager
    def exclusive(self) -> Iterator[EmbeddingModel]:
        """The model to use directly (zero-shot labels: both towers, many texts), no batch beside it."""
        self._count(1)
        try:
            with self._model:
                yield self.model
        finally:
            self._count(-1)

    def _count(self, change: int) -> None:
        with self._changed:
            self._waiting += change

    def _run(self, request: _Request) -> np.ndarray:
        with self._changed:
            self._waiting += 1
            self._queue.append(request)
            self._changed.notify_all()
            try:
                while not request.done:
                    if self._leading:
                        self._changed.wait()
                    else:
                        self._lead()
            finally:
                self._waiting -= 1
        if request.error is not None:
            raise request.error
        return request.rows

    def _lead(self) -> None:
        """Run the next batch (called holding `_changed`, which it lets go while it waits for the
        model and while the model runs): what is queued once the model is free, so requests that
        come while it is busy join the batch."""
        self._leading = True
        batch: list[_Request] = []
        try:
            deadline = time.monotonic() + self.window
            while len(self._queue) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
            self._changed.release()
            try:
                with self._model:
                    with self._changed:
                        batch, self._queue[: self.max_batch] = self._queue[: self.max_batch], []
                    _encode(self.model, batch)
            finally:
                self._changed.acquire()
            self.stats.add(len(batch))
        finally:
            self._leading = False
            self._changed.notify_all()


def _encode(model: EmbeddingModel, batch: list[_Request]) -> None:
    """Each request's rows, one forward pass per tower; a failed pass is run again per request."""
    try:
        for kind in ("texts", "images"):
            requests = [r for r in batch if r.kind == kind]
            if not requests:
                continue
            tower: Callable[[list], np.ndarray] = getattr(model, f"encode_{kind}")
            try:
                _split(requests, tower)
            except Exception as exc:
                if len(requests) == 1:
                    requests[0].error = exc
                    continue
                for request in requests:
                    try:
                        _split([request], tower)
                    except Exception as alone:
                        request.error = alone
    finally:
        for request in batch:  # an interrupt in the leading thread fails the batch, not its callers' wait
            if request.rows is None and request.error is None:
                request.error = RuntimeError("the query was interrupted: try again")
            request.done = True


def _split(requests: list[_Request], tower: Callable[[list], np.ndarray]) -> None:
    """Run `tower` over the requests' items in order and give each request its rows."""
    rows = tower([item for request in requests for item in request.items])
    start = 0
    for request in requests:
        request.rows = rows[start : start + len(request.items)]
        start += len(request.items)
