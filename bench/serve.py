"""Serving under load: `tusou serve`'s JSON API against its Gradio endpoint, and batched queries
against one at a time, on loopback, in one run.

The server is the app `tusou serve` runs (ui.app.server_app under uvicorn as ui.server runs it), in
this process, over a Searcher made here: the `demo` model over its demo collection, then
taiyi-clip-l14's real architecture with random weights (timing does not depend on them) over
synthetic vectors. The clients are bench.load, in a process of their own: 16 closed-loop clients for
30 s per row, distinct text queries (the query cache never answers).

    python -m bench.serve [--seconds 30] [--clients 16] [--precisions auto,fp32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bench.load import CAPTIONS
from bench.query_latency import MODEL, _index_dir
from bench.report import machine, table
from bench.vectors import ClipLikeSpace
from indexer import BuildPlan, build_index
from retrieval.datasets.synthetic import write_collection
from retrieval.models.model import load_model
from retrieval.search.encoder import MAX_BATCH
from retrieval.search.searcher import Searcher
from ui.app import server_app
from ui.server import listen, server

ROOT = Path(__file__).resolve().parent.parent
GOAL_RATIO, GOAL_P95_MS, GOAL_BATCHED = 10, 50, 2


@contextmanager
def serving(searcher: Searcher, clients: int) -> Iterator[str]:
    """`searcher` served as `tusou serve --client-concurrency CLIENTS` serves an index, on a free
    loopback port; yields its URL. (The clients all come from 127.0.0.1, which is one client to the
    per-client limit.)"""
    listener = listen("127.0.0.1", 0)
    running = server(server_app(searcher, client_concurrency=clients))
    thread = threading.Thread(target=running.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not running.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        running.should_exit = True
        thread.join()


def load(url: str, face: str, clients: int, seconds: float) -> dict:
    """bench.load's figures for one face of the server at `url`."""
    command = [sys.executable, "-m", "bench.load", url, face, "--clients", str(clients), "--seconds", str(seconds)]
    return json.loads(subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True).stdout)


def rss_mb() -> tuple[float, float]:
    """This process's resident memory now and at its peak (the server's: it runs here), in MB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return tuple(int(fields[name].split()[0]) / 1024 for name in ("VmRSS", "VmHWM"))


def measured(figures: dict) -> list:
    """requests/s, p50, p95, p99 (ms), errors, RSS of one row."""
    times = np.array(figures["latencies"]) * 1000
    rate = len(times) / figures["seconds"]
    now, peak = rss_mb()
    return [rate, *(np.percentile(times, [50, 95, 99]) if len(times) else [np.nan] * 3), figures["errors"], f"{now:,.0f} / {peak:,.0f}"]


def equal_vectors(searcher: Searcher, texts: list[str]) -> tuple[float, float]:
    """The lowest cosine and the largest difference between each text's vector alone and in one batch with the others."""
    alone = np.concatenate([searcher.model.encode_texts([text]) for text in texts])
    together = searcher.model.encode_texts(texts)
    return float(np.min(np.sum(alone * together, axis=1))), float(np.max(np.abs(alone - together)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--images", type=int, default=200, help="demo images in the demo model's collection")
    parser.add_argument("--vectors", type=int, default=100_000, help="synthetic vectors in the taiyi-size index")
    parser.add_argument("--precisions", default="auto,fp32", help="the taiyi-size rows' --precision values")
    args = parser.parse_args()
    rows, notes = [], []

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_collection(root / "collection", args.images)
        build_index(BuildPlan([root / "collection"], root / "demo", "demo", device="cpu", workers=0, progress=False))
        demo = Searcher(root / "demo", device="cpu", max_batch=MAX_BATCH)
        with serving(demo, args.clients) as url:
            api = load(url, "json", args.clients, args.seconds)
            rows.append(["demo: JSON API (GET /api/v1/search)", *measured(api)])
            gradio = load(url, "gradio", args.clients, args.seconds)
            rows.append(["demo: Gradio endpoint (/gradio_api/call/search_text)", *measured(gradio)])
        ratio = rows[0][1] / rows[1][1]
        demo_met = ratio >= GOAL_RATIO and rows[0][3] <= GOAL_P95_MS and rows[0][5] == 0
        notes.append(f"demo: the JSON API serves {ratio:.1f}× the Gradio endpoint's requests/s, p95 {rows[0][3]:.1f} ms, "
                     f"{rows[0][5]} errors (goal ≥ {GOAL_RATIO}×, p95 ≤ {GOAL_P95_MS} ms, 0 errors: {'met' if demo_met else 'missed'}).")
        demo.close()

        model = load_model(MODEL, device="cpu", pretrained=False)
        directory = _index_dir(root / "taiyi", model, ClipLikeSpace(dim=model.dim).array(args.vectors))
        for precision in args.precisions.split(","):
            rates, dtype = {}, ""
            for max_batch in (MAX_BATCH, 1):
                searcher = Searcher(directory, model=model, precision=precision, max_batch=max_batch)
                with serving(searcher, args.clients) as url:
                    figures = load(url, "json", args.clients, args.seconds)
                dtype = str(searcher.model.dtype).removeprefix("torch.")
                sizes = list(searcher.encoder.stats.sizes)
                way = f"batched (≤ {max_batch}; mean batch {np.mean(sizes):.1f})" if max_batch > 1 else "one at a time"
                rows.append([f"taiyi-size, --precision {precision} ({dtype}): JSON API, {way}", *measured(figures)])
                rates[max_batch] = rows[-1][1]
                if max_batch > 1:
                    cosine, difference = equal_vectors(searcher, [f"{caption} {n}" for n, caption in enumerate(CAPTIONS * 2)][:16])
                searcher.close()
            speedup = rates[MAX_BATCH] / rates[1]
            notes.append(f"taiyi-size text tower in {dtype}: batched {speedup:.2f}× the requests/s of one at a time (goal ≥ "
                         f"{GOAL_BATCHED}×: {'met' if speedup >= GOAL_BATCHED else 'missed'}); 16 texts alone against in one "
                         f"batch: lowest cosine {cosine:.6f}, largest difference {difference:.1e}.")

    notes += [f"{args.clients} closed-loop clients for {args.seconds:g} s a row after 3 s of warm-up, distinct text "
              f"queries, k 10; the server in one process (RSS: now / peak, MB), the clients (bench.load) in another. "
              f"taiyi-size: {args.vectors:,} synthetic 768-d vectors.", f"Machine: {machine()}."]
    print(table("Serving under load", ["server, face", "requests/s", "p50 ms", "p95 ms", "p99 ms", "errors", "RSS MB"], rows, notes))


if __name__ == "__main__":
    main()
