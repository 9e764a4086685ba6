"""The segment store's merges: what a merge costs, and what searching many segments costs in recall.

Over synthetic CLIP-like 768-d vectors (bench/vectors.py), written into a format-2 store through
the store's own writers (indexer.segment_writer, retrieval.store.catalog), merged by indexer.merge
and searched through retrieval.store.store's View, as `tusou index` and `tusou search` do.

    python -m bench.store [--count 200000] [--merge-segments 10] [--merge-rows 10000]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bench.report import machine, table, timed
from bench.vectors import ClipLikeSpace
from indexer.faiss_build import exact_neighbours, recall_at_k
from indexer.merge import merge_all
from indexer.segment_writer import write_segment
from retrieval.models.registry import MODELS
from retrieval.sizes import format_size
from retrieval.store.catalog import Catalog, SegmentRow, bump_generation, item_values, put_items, put_segment, put_setting
from retrieval.store.manifest import Manifest, write_manifest
from retrieval.store.model_ref import ModelRef
from retrieval.store.records import CatalogItem
from retrieval.store.store import CATALOG, open_store


def synthetic_store(directory: Path, space: ClipLikeSpace, segments: list[tuple[int, str]]) -> Catalog:
    """A store of `segments` ((rows, index type) each): segment s holds stream s of `space`, written a
    chunk at a time (never all in memory); items are numbered in segment order."""
    directory.mkdir(parents=True)
    model = next(name for name, entry in MODELS.items() if entry.dim == space.dim)  # a manifest names one; none is loaded
    write_manifest(directory, Manifest(ModelRef(model, "synthetic"), space.dim))
    catalog = Catalog(directory / CATALOG, create=True)
    start, rows = 0, []
    for number, (size, kind) in enumerate(segments, 1):
        fill = lambda out, size=size, number=number: _fill(out, space.chunks(size, stream=number))  # noqa: E731
        rows.append(write_segment(directory, number, np.arange(start, start + size), space.dim, fill, kind, None))
        start += size
    with catalog.transaction() as db:
        put_items(db, _items(rows))
        for row in rows:
            put_segment(db, row)
        put_setting(db, "next_segment", len(rows) + 1)
        bump_generation(db)
    return catalog


def _fill(out: np.ndarray, chunks: Iterator[np.ndarray]) -> None:
    start = 0
    for chunk in chunks:
        out[start : start + len(chunk)] = chunk
        start += len(chunk)


def _items(rows: list[SegmentRow]) -> Iterator[tuple]:
    item = 0
    for row in rows:
        for r in range(row.count):
            path = f"/bench/{item // 1000:04d}/{item:08d}.jpg"
            yield item_values(CatalogItem(path, 1, 10**18, "", 1, 1, id=item, format="jpeg"), row.id, r)
            item += 1


def _top_ids(directory: Path, queries: np.ndarray) -> np.ndarray:
    view = open_store(directory).view()
    return np.array([view.ids(found) for found in view.search(queries, 10)[1]])


def merge_cost(folder: Path, segments: int = 10, rows: int = 10_000, index_type: str = "hnsw", space: ClipLikeSpace | None = None) -> dict:
    """Seconds and bytes written (the new segment's files and the transaction's WAL frames) to merge
    `segments` flat segments of `rows` each into one of `index_type`, trained and tuned as every merge is."""
    directory = folder / "merge"
    catalog = synthetic_store(directory, space or ClipLikeSpace(), [(rows, "flat")] * segments)
    before = {p.name for p in (directory / "segments").iterdir()}
    catalog.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    seconds, merged = timed(lambda: merge_all(directory, catalog, index_type, None))
    written = [p for p in [*(directory / "segments").iterdir(), directory / f"{CATALOG}-wal"] if p.name not in before]
    return {"rows": segments * rows, "segments": segments, "type": merged.index_entry.type, "seconds": seconds,
            "bytes": sum(p.stat().st_size for p in written), "tuned": merged.index_entry.search.get("recall_at_10", 1.0)}


def merged_recall(
    folder: Path, count: int = 200_000, small_share: float = 0.1, small_rows: int = 1_000, index_type: str = "hnsw",
    queries: int = 200, space: ClipLikeSpace | None = None,
) -> dict:
    """recall@10 against an exact scan: of one big segment of `index_type` plus `small_share` of the
    items in flat segments of `small_rows` each (as builds of a few new images leave them), and of the
    same items merged into one segment of `index_type`; with the tuned recall of each big segment."""
    space, directory = space or ClipLikeSpace(), folder / "recall"
    small = int(round(count * small_share / small_rows))
    big = count - small * small_rows
    catalog = synthetic_store(directory, space, [(big, index_type)] + [(small_rows, "flat")] * small)
    asked = space.array(queries, queries=True, stream=10**6)
    segmented = _top_ids(directory, asked)
    tuned_big = catalog.segments()[0].index_entry.search.get("recall_at_10", 1.0)
    merged = merge_all(directory, catalog, index_type, None)
    ids = np.load(directory / merged.files["ids"])
    truth = ids[exact_neighbours(np.load(directory / merged.files["vectors"], mmap_mode="r"), asked, 10)]
    return {"count": count, "big": big, "small_segments": small, "small_rows": small_rows, "type": index_type, "queries": queries,
            "segmented": recall_at_k(segmented, truth), "tuned_big": tuned_big,
            "merged": recall_at_k(_top_ids(directory, asked), truth), "tuned_merged": merged.index_entry.search.get("recall_at_10", 1.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000, help="vectors of the recall measurement")
    parser.add_argument("--merge-segments", type=int, default=10)
    parser.add_argument("--merge-rows", type=int, default=10_000, help="rows of each merged segment")
    parser.add_argument("--type", default="hnsw")
    parser.add_argument("--dir", type=Path, help="where to write the stores (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        cost = merge_cost(Path(folder), args.merge_segments, args.merge_rows, args.type)
        print(f"merge: {cost}", flush=True)
        recall = merged_recall(Path(folder), args.count, index_type=args.type)
        print(f"recall: {recall}", flush=True)
    merged = [cost["type"], cost["rows"], cost["seconds"], format_size(cost["bytes"]), f"{cost['tuned']:.3f}"]
    print(table(f"Merging {cost['segments']} flat segments of {args.merge_rows:,} vectors into one",
                ["type", "rows", "seconds", "bytes written", "tuned recall@10"], [merged],
                ["Bytes written: the new segment's files and the transaction's WAL frames."]))
    segmented = f"1 {recall['type']} of {recall['big']:,} + {recall['small_segments']} flat of {recall['small_rows']:,}"
    rows = [[segmented, f"{recall['segmented']:.3f}", f"{recall['tuned_big']:.3f}"],
            [f"1 {recall['type']} of {recall['count']:,} (merged)", f"{recall['merged']:.3f}", f"{recall['tuned_merged']:.3f}"]]
    print(table(f"recall@10 at {recall['count']:,} vectors: one big segment + 10% in small ones, against the merged index",
                ["store", "recall@10", "tuned recall@10 of its big segment"], rows,
                [f"{recall['queries']} text-like queries; recall against an exact scan of all vectors. Machine: {machine()}."]))


if __name__ == "__main__":
    main()
