"""Index types at scale: build time, bytes per vector, QPS and recall@10 against exact search.

Over synthetic CLIP-like 768-d vectors (bench/vectors.py) with text-like queries from a
shifted distribution. Each type is built, tuned and searched by tusou's own code
(indexer.faiss_build, retrieval.store.ann: the re-ranking included), from float16 embeddings
memory-mapped from disk as an index directory holds them. The baseline is an exact flat
scan, one query at a time, measured in the same run.

    python -m bench.index_types [--count 1000000] [--types flat,hnsw,ivf,ivfpq]
    python -m bench.index_types --count 10000000 --types ivf,ivfpq   # 15 GB of disk, ~40 min
"""

from __future__ import annotations

import argparse
import tempfile
import threading
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from bench.report import latencies, machine, table, timed
from bench.vectors import ClipLikeSpace
from indexer.faiss_build import exact_neighbours, index_embeddings, recall_at_k
from retrieval.sizes import format_size, parse_size
from retrieval.store.index_types import CHOICES
from retrieval.store import ann

SINGLE_QUERIES = 50
"""Queries timed one at a time (a flat scan of 10M vectors takes seconds each)."""


class PeakMemory:
    """Peak anonymous memory of this process (page cache of memory-mapped files excluded)."""

    def __init__(self, every: float = 0.2):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(every,), daemon=True)

    def _watch(self, every: float) -> None:
        while not self._stop.wait(every):
            self.sample()

    def sample(self) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                self.peak = max(self.peak, int(line.split()[1]) * 1024)
        return self.peak

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def write_vectors(path: Path, space: ClipLikeSpace, count: int) -> np.ndarray:
    """`count` float16 vectors in an .npy file, written chunk by chunk, opened memory-mapped."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(count, space.dim))
    with tqdm(total=count, desc="vectors", unit=" vec", disable=count < 2_000_000) as bar:
        start = 0
        for chunk in space.chunks(count):
            array[start : start + len(chunk)] = chunk
            start += len(chunk)
            bar.update(len(chunk))
    array.flush()
    del array
    return np.load(path, mmap_mode="r")


def measure(name: str, embeddings: np.ndarray, queries: np.ndarray, truth: np.ndarray, folder: Path, budget: int | None) -> dict:
    seconds, (index, info) = timed(lambda: index_embeddings(embeddings, name, budget))
    path = folder / f"{name}.faiss"
    faiss.write_index(index, str(path))
    rerank = info.search.get("rerank", 0)
    single = latencies(lambda q: ann.search(index, embeddings, q[None], 10, rerank), queries[:SINGLE_QUERIES], queries[:3])
    batch_seconds, (_, found) = timed(lambda: ann.search(index, embeddings, queries, 10, rerank))
    knobs = {k: v for k, v in info.search.items() if k in ("nprobe", "ef_search", "rerank")}
    return {
        "type": name if name == info.type else f"{name} → {info.type}",
        "params": ", ".join(f"{k} {v}" for k, v in {**info.params, **knobs}.items()) or "-",
        "build_s": seconds,
        "bytes_per_vector": path.stat().st_size / len(embeddings),
        "size": path.stat().st_size,
        "qps_single": 1 / float(np.median(single)),
        "qps_batch": len(queries) / batch_seconds,
        "recall": recall_at_k(found, truth),
        "tuned_recall": info.search.get("recall_at_10", 1.0),
    }


def blas_threshold_rows(embeddings: np.ndarray, queries: np.ndarray, batch: int = 64) -> list[list[object]]:
    """A flat search of `batch` queries with faiss's default BLAS threshold and with tusou's."""
    flat = faiss.IndexFlatIP(embeddings.shape[1])
    for start in range(0, min(len(embeddings), 1_000_000), 65_536):
        flat.add(np.asarray(embeddings[start : min(start + 65_536, 1_000_000)], dtype=np.float32))
    tusou_threshold = faiss.cvar.distance_compute_blas_threshold
    rows = []
    for label, threshold in [("faiss default (BLAS from 166 queries at d=768)", 128_000), ("tusou (BLAS always)", tusou_threshold)]:
        faiss.cvar.distance_compute_blas_threshold = threshold
        seconds, _ = timed(lambda: flat.search(queries[:batch], 10))
        rows.append([label, batch / seconds])
    faiss.cvar.distance_compute_blas_threshold = tusou_threshold
    rows[1].append(f"{rows[1][1] / rows[0][1]:.1f}×")
    rows[0].append("1×")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--types", default="flat,hnsw,ivf,ivfpq", help=f"comma-separated, from {', '.join(CHOICES)}")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--max-index-memory", help="budget passed to every build (default: tusou's, half of RAM)")
    parser.add_argument("--dir", type=Path, help="where to write the vectors (default: a temporary folder)")
    args = parser.parse_args()
    budget = parse_size(args.max_index_memory) if args.max_index_memory else None
    space = ClipLikeSpace()

    with PeakMemory() as memory, tempfile.TemporaryDirectory(dir=args.dir) as folder:
        folder = Path(folder)
        generated, embeddings = timed(lambda: write_vectors(folder / "embeddings.npy", space, args.count))
        queries = space.array(args.queries, queries=True)
        truth_seconds, truth = timed(lambda: exact_neighbours(embeddings, queries, 10))
        flat_qps = None
        rows = []
        for name in args.types.split(","):
            result = measure(name, embeddings, queries, truth, folder, budget)
            print(f"{result['type']}: {result}", flush=True)
            if name == "flat":
                flat_qps = result["qps_single"]
            rows.append(result)
        blas_rows = blas_threshold_rows(embeddings, queries) if "flat" in args.types.split(",") else []
    speed = lambda r: f"{r['qps_single'] / flat_qps:.1f}×" if flat_qps else "-"  # noqa: E731
    table_rows = [
        [r["type"], r["params"], r["build_s"], f"{r['bytes_per_vector']:.0f}", format_size(r["size"]), r["qps_single"], speed(r),
         r["qps_batch"], f"{r['recall']:.3f}", f"{r['tuned_recall']:.3f}"]
        for r in rows
    ]
    notes = [
        f"{args.count:,} synthetic CLIP-like 768-d vectors (float16 on disk, memory-mapped; written in {generated:.0f} s), "
        f"{args.queries} text-like queries from a shifted distribution; recall@10 against an exact scan "
        f"({truth_seconds:.0f} s). QPS single = one query at a time (median of {SINGLE_QUERIES}), batch = all {args.queries} at once. "
        "tuned = the recall the build measured on its own tuning queries and stored in the manifest.",
        f"Peak anonymous memory of the whole run: {format_size(memory.peak)}. Machine: {machine()}.",
    ]
    print(table(f"Index types at {args.count:,} vectors", ["type", "params", "build s", "bytes/vec", "index size", "QPS single",
                                                          "vs flat", "QPS batch", "recall@10", "tuned"], table_rows, notes))
    if blas_rows:
        print(table(f"Flat search of a batch of 64 queries over {min(args.count, 1_000_000):,} vectors",
                    ["faiss.cvar.distance_compute_blas_threshold", "QPS", "speed-up"], blas_rows))


if __name__ == "__main__":
    main()
