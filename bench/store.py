"""The segment store at scale: opening, filtered search, and (with the build's commit) adds and deletes.

Synthetic CLIP-like vectors (bench/vectors.py) go through the store's own API: segment files by
indexer.segment_writer, item rows into catalog.sqlite, searches through retrieval.store.store. The
items carry synthetic metadata chosen so each filter's selectivity is known exactly: folder
`/photos/NNN` (1,000 folders: one is 0.1%), `taken` spread evenly over ten years (one year is 10%),
and every item taken after 1900 (100%). Baselines are measured in the same run: today's format-1
open (the JSONL catalog parsed whole) and a brute-force scan of the matching items.

    python -m bench.store [--count 1000000] [--types ivf,hnsw]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.report import machine, table, timed
from bench.vectors import ClipLikeSpace
from indexer.segment_writer import write_segment
from retrieval.search.filters import Filters, make_filters
from retrieval.store.catalog import Catalog, item_values, put_items, put_segment, put_setting
from retrieval.store.manifest import Manifest, write_manifest
from retrieval.store.model_ref import ModelRef
from retrieval.store.records import CatalogItem
from retrieval.store.store import CATALOG, open_store

DIM = 768
MODEL = ModelRef("taiyi-clip-l14", "synthetic")
FOLDERS = 1000
YEARS = 10
ROWS_PER_INSERT = 50_000
QUERIES = 50
SELECTIVITIES = {
    "0.1% (one folder)": dict(folders=["/photos/007"]),
    "10% (one year)": dict(after="2021", before="2022"),
    "100% (after 1900)": dict(after="1900"),
}


def synthetic_item(i: int, order: np.ndarray) -> CatalogItem:
    """Item i: folder i % FOLDERS, taken on day order[i] of YEARS years from 2016 (a permutation, so
    dates are independent of folders and vectors)."""
    day = int(order[i]) * (YEARS * 365) // len(order)
    year, rest = 2016 + day // 365, day % 365
    taken = f"{year}-{1 + rest // 31 % 12:02d}-{1 + rest % 28:02d}T12:00:00"
    return CatalogItem(f"/photos/{i % FOLDERS:03d}/{i:08d}.jpg", 1, 0, "", 1, 1, id=i, taken=taken, format="jpeg")


def make_store(directory: Path, count: int, index_type: str, space: ClipLikeSpace) -> None:
    """One segment of `count` vectors of `index_type` with its catalog, as a build would write it."""
    directory.mkdir(parents=True)
    write_manifest(directory, Manifest(MODEL, DIM))
    catalog = Catalog(directory / CATALOG, create=True)
    chunks = space.chunks(count)

    def fill(out: np.ndarray) -> None:
        start = 0
        for chunk in chunks:
            out[start : start + len(chunk)] = chunk
            start += len(chunk)

    row = write_segment(directory, 1, np.arange(count), DIM, fill, index_type, None, progress=True)
    order = np.random.default_rng(7).permutation(count)
    with catalog.transaction() as db:
        for start in range(0, count, ROWS_PER_INSERT):
            put_items(db, (item_values(synthetic_item(i, order), 1, i) for i in range(start, min(count, start + ROWS_PER_INSERT))))
        put_segment(db, row)
        for key, value in (("next_id", count), ("next_segment", 2), ("generation", 1)):
            put_setting(db, key, value)
    catalog.close()


def write_format1(directory: Path, store_dir: Path, count: int) -> None:
    """The same index in today's format (JSONL catalog), its vectors and FAISS file hard-linked: the open baseline."""
    directory.mkdir()
    order = np.random.default_rng(7).permutation(count)
    with open(directory / "catalog.1.jsonl", "w") as handle:
        for i in range(count):
            item = synthetic_item(i, order)
            handle.write(json.dumps({"path": item.path, "size": 1, "mtime_ns": 0, "sha256": "", "width": 1, "height": 1, "id": i}) + "\n")
    os.link(store_dir / "segments/000001.vectors.npy", directory / "embeddings.1.npy")
    os.link(store_dir / "segments/000001.faiss", directory / "index.1.faiss")
    entry = open_store(store_dir).catalog.segments()[0].index_entry
    manifest = Manifest(MODEL, DIM, count, entry, {"catalog": "catalog.1.jsonl", "embeddings": "embeddings.1.npy", "faiss": "index.1.faiss"},
                        1, count, format_version=1)
    write_manifest(directory, manifest)


def open_and_query(directory: str) -> None:
    """(Run in a fresh process.) Seconds to open the index and answer one query; RSS it added beyond its FAISS index."""
    import faiss  # noqa: F401  (imported before the baseline RSS: its libraries are not the index's)

    query = ClipLikeSpace(dim=DIM).array(1, queries=True, stream=9)
    before = _rss()
    seconds, _ = timed(lambda: open_store(directory).view().search(query, 10))
    faiss_bytes = sum(p.stat().st_size for p in Path(directory).rglob("*.faiss"))
    print(json.dumps({"seconds": seconds, "rss_beyond_faiss": _rss() - before - faiss_bytes}))


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_open(directory: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.store", "--open", str(directory)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@dataclass
class FilterRow:
    name: str
    matching: int
    p50_ms: float
    recall: float
    brute_ms: float


def measure_filters(directory: Path, queries: np.ndarray) -> tuple[float, list[FilterRow]]:
    """Unfiltered recall@10 and, per selectivity, the filtered top-10's latency and recall@10 against
    a brute-force scan of the matching items (the baseline, timed too)."""
    store = open_store(directory)
    view = store.view()
    vectors = view.segments[0].vectors
    rows = [_filter_row("none (unfiltered)", Filters(), store, view, vectors, queries)]
    rows += [_filter_row(name, make_filters(**spec), store, view, vectors, queries) for name, spec in SELECTIVITIES.items()]
    return rows[0].recall, rows


def _filter_row(name: str, filters: Filters, store, view, vectors: np.ndarray, queries: np.ndarray) -> FilterRow:
    matching = np.sort(np.concatenate(list(store.catalog.matching_rows(filters).values()))) if filters.active else np.arange(len(vectors))
    view.search(queries[0], 10, filters)  # warm: SQLite pages and FAISS structures
    times, recalls, brute = [], [], []
    for query in queries:
        seconds, (_, found) = timed(lambda: view.search(query, 10, filters))
        brute_seconds, truth = timed(lambda: _brute_force(vectors, matching, query))
        times.append(seconds)
        brute.append(brute_seconds)
        recalls.append(len(set(view.ids(found[0]).tolist()) & set(truth.tolist())) / len(truth))
    return FilterRow(name, len(matching), 1000 * float(np.median(times)), float(np.mean(recalls)), 1000 * float(np.median(brute)))


def _brute_force(vectors: np.ndarray, rows: np.ndarray, query: np.ndarray, k: int = 10) -> np.ndarray:
    scores = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), 262_144):
        block = rows[start : start + 262_144]
        scores[start : start + len(block)] = np.asarray(vectors[block], dtype=np.float32) @ query
    return rows[np.argsort(-scores)[:k]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--types", default="ivf,hnsw")
    parser.add_argument("--open", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.open:
        return open_and_query(args.open)
    space = ClipLikeSpace(dim=DIM)
    queries = space.array(QUERIES, queries=True, stream=3)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TUSOU_BENCH_DIR")) as folder:
        for index_type in args.types.split(","):
            store_dir = Path(folder) / f"store-{index_type}"
            make_store(store_dir, args.count, index_type, space)
            old_dir = Path(folder) / f"format1-{index_type}"
            write_format1(old_dir, store_dir, args.count)
            opened, baseline = measure_open(store_dir), measure_open(old_dir)
            print(table(
                f"Open an index of {args.count:,} and answer the first query ({index_type})",
                ["format", "seconds", "RSS beyond the FAISS index", "vs format 1"],
                [["format 1 (JSONL catalog, baseline)", baseline["seconds"], f"{baseline['rss_beyond_faiss'] / 2**20:.0f} MB", 1.0],
                 ["format 2 (segments + SQLite)", opened["seconds"], f"{opened['rss_beyond_faiss'] / 2**20:.0f} MB",
                  baseline["seconds"] / opened["seconds"]]],
            ))
            unfiltered, rows = measure_filters(store_dir, queries)
            print(table(
                f"Filtered top-10 over {args.count:,} ({index_type}, unfiltered recall@10 {unfiltered:.3f})",
                ["filter", "matching", "p50 ms", "recall@10 in filter", "brute-force scan p50 ms", "speed-up"],
                [[r.name, r.matching, r.p50_ms, f"{r.recall:.3f}", r.brute_ms, r.brute_ms / r.p50_ms] for r in rows],
                [f"{QUERIES} CLIP-like text queries; recall against a brute-force scan of the matching items. Machine: {machine()}."],
            ))
            shutil.rmtree(old_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
