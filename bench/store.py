"""The segment store at scale: opening, filtered search, merges, and recall across segments.

Synthetic CLIP-like 768-d vectors (bench/vectors.py) go through the store's own API: segment files
by indexer.segment_writer, item rows into catalog.sqlite, merges by indexer.merge, searches through
retrieval.store.store's View, as `tusou index` and `tusou search` do. The items carry synthetic
metadata chosen so each filter's selectivity is known exactly: folder `/photos/NNN` (1,000 folders:
one is 0.1%), `taken` spread evenly over ten years independently of everything else (one year is
10%), and every item taken after 1900 (100%). Baselines are measured in the same run: today's
format-1 open (the JSONL catalog parsed whole) and a brute-force scan of the matching items.

    python -m bench.store [--count 1000000] [--types ivf,hnsw] [--recall-count 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bench.report import machine, table, timed
from bench.vectors import ClipLikeSpace
from indexer.faiss_build import exact_neighbours, recall_at_k
from indexer.commit import Change, commit_change
from indexer.merge import merge_all
from indexer.plan import Layout
from indexer.segment_writer import segment_files, write_segment
from retrieval.search.filters import Filters, make_filters
from retrieval.sizes import format_size
from retrieval.store.arrays import write_array
from retrieval.store.catalog import INDEXES, SEGMENTS_DIR, UNIQUE_PATHS, Catalog, SegmentRow, bump_generation, item_values, put_items, put_segment, put_setting
from retrieval.store.manifest import Manifest, read_manifest, write_manifest
from retrieval.store.model_ref import ModelRef
from retrieval.store.records import CatalogItem
from retrieval.store import store as store_module
from retrieval.store.store import CATALOG, open_store

DIM = 768
MODEL = ModelRef("taiyi-clip-l14", "synthetic")
"""A manifest names a model (of the vectors' dim); none is loaded."""
FOLDERS = 1000
YEARS = 10
QUERIES = 50
SELECTIVITIES = {
    "0.1% (one folder)": dict(folders=["/photos/007"]),
    "10% (one year)": dict(after="2021", before="2022"),
    "100% (after 1900)": dict(after="1900"),
}


def synthetic_store(directory: Path, space: ClipLikeSpace, segments: list[tuple[int, str]]) -> Catalog:
    """A store of `segments` ((rows, index type) each): segment s holds stream s of `space`, written a
    chunk at a time (never all in memory); items are numbered in segment order."""
    directory.mkdir(parents=True)
    write_manifest(directory, Manifest(MODEL, space.dim))
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


def tiled_store(directory: Path, source: Path, copies: int) -> Catalog:
    """A store of `copies` segments, each the one segment of the store at `source` (its vectors and
    FAISS file hard-linked, its ids its own): an index of copies × the rows in seconds rather than
    hours, for what does not depend on the vectors being distinct (opening, the first query)."""
    directory.mkdir(parents=True)
    (directory / SEGMENTS_DIR).mkdir()
    write_manifest(directory, read_manifest(source))
    [row] = Catalog(source / CATALOG).segments()
    catalog = Catalog(directory / CATALOG, create=True)
    rows = []
    for number in range(1, copies + 1):
        files = segment_files(number)
        for role in ("vectors", "faiss"):
            os.link(source / row.files[role], directory / files[role])
        write_array(directory / files["ids"], np.arange((number - 1) * row.count, number * row.count, dtype=np.int64))
        rows.append(SegmentRow(number, row.count, 0, files, row.index_entry))
    indexes = [statement for statement in INDEXES.split(";") if statement.strip()]
    with catalog.transaction() as db:  # rows first, then the filter indexes, each built by one sort
        for name in re.findall(r"EXISTS (\w+) ON", INDEXES):
            db.execute(f"DROP INDEX {name}")
        db.execute("DROP TRIGGER items_path_unique")  # its lookups would scan the table without items_by_path
        put_items(db, _items(rows))
        for statement in indexes:
            db.execute(statement)
        db.execute(UNIQUE_PATHS)
        for segment in rows:
            put_segment(db, segment)
        put_setting(db, "next_segment", copies + 1)
        bump_generation(db)
    return catalog


def _fill(out: np.ndarray, chunks: Iterator[np.ndarray]) -> None:
    start = 0
    for chunk in chunks:
        out[start : start + len(chunk)] = chunk
        start += len(chunk)


def _items(rows: list[SegmentRow]) -> Iterator[tuple]:
    order = np.random.default_rng(7).permutation(sum(row.count for row in rows))
    item = 0
    for row in rows:
        for r in range(row.count):
            yield item_values(synthetic_item(item, order), row.id, r)
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


def synthetic_item(i: int, order: np.ndarray) -> CatalogItem:
    """Item i: folder i % FOLDERS, taken on day order[i] of YEARS years from 2016 (a permutation, so
    dates are independent of folders and vectors)."""
    day = int(order[i]) * (YEARS * 365) // len(order)
    year, rest = 2016 + day // 365, day % 365
    taken = f"{year}-{1 + rest // 31 % 12:02d}-{1 + rest % 28:02d}T12:00:00"
    return CatalogItem(f"/photos/{i % FOLDERS:03d}/{i:08d}.jpg", 1, 0, "", 1, 1, id=i, taken=taken, format="jpeg")


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


def open_and_query(directory: str, how: str) -> dict:
    """(Run in a fresh process.) Seconds to open the index and answer one query, and the peak memory
    that added beyond the FAISS index's own size. `how`: `store` (this tusou) or `format1` (the code that
    read format 1 before the store: the JSONL catalog parsed into objects, then the FAISS search)."""
    import faiss  # noqa: F401  (its libraries are not the index's memory)

    from retrieval.store.index_store import open_index

    query = np.random.default_rng(9).standard_normal((1, DIM)).astype(np.float32)
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets the peak resident set (VmHWM) to the current one
    before, mapped = _rss(), _rss("RssFile")

    def first_query():
        searcher = open_store(directory).view() if how == "store" else open_index(directory)
        searcher.search(query, 10)
        return searcher  # alive until its mapped pages are counted: freed, it would unmap them first

    seconds, searcher = timed(first_query)
    read_whole = sum(p.stat().st_size for p in Path(directory).rglob("*.faiss")) if how == "format1" else 0
    beyond = _rss("VmHWM") - before - (_rss("RssFile") - mapped) - read_whole
    del searcher
    return {"seconds": seconds, "rss_beyond_faiss": beyond}


def _rss(field: str = "VmRSS") -> int:
    """Resident memory now (VmRSS), at its peak (VmHWM), or of mapped files (RssFile, only the pages
    touched). The index's own data is the FAISS file, read whole by the format-1 reader, and the pages
    of the mapped segment files a search touched: what is left is the memory opening costs."""
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(field + ":"))


def in_fresh_process(measure: str, directory: Path, *args: object) -> object:
    """`measure` (a function of FRESH) run on `directory` in a new process: its figures owe nothing to
    what this one built before (its heap, its page cache share, its BLAS and OpenMP threads)."""
    out = subprocess.run([sys.executable, "-m", "bench.store", "--fresh", measure, str(directory), *map(str, args)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_open(directory: Path, how: str) -> dict:
    return in_fresh_process("open", directory, how)


@dataclass
class FilterRow:
    name: str
    matching: int
    first_p50_ms: float
    """A filter's first query: the catalog read for it (count, share, matching rows) and the search."""
    p50_ms: float
    """Further queries with the same filter (a view keeps what it read)."""
    p90_ms: float
    recall: float


def _queries(count: int) -> np.ndarray:
    """The filter measurements' CLIP-like text queries, the same in every process."""
    return ClipLikeSpace(dim=DIM).array(int(count), queries=True, stream=3)


def measure_filters(directory: str, queries: int) -> list[dict]:
    """Per selectivity (none first), the filtered top-10's latency and recall@10 against a brute-force
    scan of the matching items (the baseline)."""
    store = open_store(directory)
    view, asked = store.view(), _queries(queries)
    vectors = view.segments[0].vectors
    rows = [_filter_row("none (unfiltered)", Filters(), store, view, vectors, asked)]
    rows += [_filter_row(name, make_filters(**spec), store, view, vectors, asked) for name, spec in SELECTIVITIES.items()]
    return [vars(row) for row in rows]


def _filter_row(name: str, filters: Filters, store, view, vectors: np.ndarray, queries: np.ndarray) -> FilterRow:
    matching = np.sort(np.concatenate(list(store.catalog.matching_rows(filters).values()))) if filters.active else np.arange(len(vectors))
    truth = _brute_force(vectors, matching, queries)
    first, times, found = first_and_further(view, filters, queries)
    recalls = [len(set(view.ids(ids).tolist()) & set(true.tolist())) / len(true) for ids, true in zip(found, truth)]
    p50, p90 = np.percentile(times, [50, 90]) * 1000
    return FilterRow(name, len(matching), float(np.median(first) * 1000), float(p50), float(p90), float(np.mean(recalls)))


def first_and_further(view, filters: Filters, queries: np.ndarray) -> tuple[list[float], list[float], list[np.ndarray]]:
    """Seconds of each query's first run with `filters` (its catalog reads included: view.matched
    cleared) and of a further run, and the rows the further run found; after a warm-up query
    (SQLite pages and FAISS structures)."""
    view.search(queries[0], 10, filters)
    first, further, found = [], [], []
    for query in queries:
        view.matched.clear()
        first.append(timed(lambda: view.search(query, 10, filters))[0])
        seconds, (_, rows) = timed(lambda: view.search(query, 10, filters))
        further.append(seconds)
        found.append(rows[0])
    return first, further, found


def fetched_against_post_filtered(directory: str, queries: int, selectivity: str) -> tuple[float, float, float]:
    """p50 ms of a filter's first query with its rows fetched and selected in FAISS (the plan up to
    FETCH_SHARE) and post-filtered (the plan above it, the only one for many matches before), query by
    query in turn, and the median of their ratio: the speed-up of the plan, robust to a noisy machine."""
    view, filters, fetch_share = open_store(directory).view(), make_filters(**SELECTIVITIES[selectivity]), store_module.FETCH_SHARE
    times: dict[float, list[float]] = {0.0: [], fetch_share: []}
    try:
        for query in _queries(queries):
            for share, seconds in times.items():
                store_module.FETCH_SHARE = share
                view.matched.clear()
                seconds.append(timed(lambda: view.search(query, 10, filters))[0])
    finally:
        store_module.FETCH_SHARE = fetch_share
    post, fetched = np.array(times[0.0]), np.array(times[fetch_share])
    return float(np.median(fetched) * 1000), float(np.median(post) * 1000), float(np.median(post / fetched))


def _brute_force(vectors: np.ndarray, rows: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """The exact top-k rows of each query among `rows`: one pass over them for all queries."""
    best = np.empty((len(queries), 0), dtype=np.int64)
    best_scores = np.empty((len(queries), 0), dtype=np.float32)
    for start in range(0, len(rows), 262_144):
        block = rows[start : start + 262_144]
        scores = np.concatenate([best_scores, queries @ np.asarray(vectors[block], dtype=np.float32).T], axis=1)
        candidates = np.concatenate([best, np.broadcast_to(block, (len(queries), len(block)))], axis=1)
        top = np.argsort(-scores, axis=1)[:, :k]
        best, best_scores = np.take_along_axis(candidates, top, 1), np.take_along_axis(scores, top, 1)
    return best


def _written() -> int:
    """Bytes this process has sent to storage (/proc/self/io write_bytes: after fsync, what reached the disk)."""
    with open("/proc/self/io") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("write_bytes"))


def _commit(directory: Path, change: Change) -> tuple[float, int]:
    """Seconds and bytes of committing `change` as a build would (indexer.commit), model excluded."""
    catalog = Catalog(directory / CATALOG)
    try:
        before = _written()
        seconds, _ = timed(lambda: commit_change(directory, catalog, DIM, change, progress=False))
        return seconds, _written() - before
    finally:
        catalog.close()


def _added(first: int, added: int, folders: str, space: ClipLikeSpace, layout: Layout) -> Change:
    """`added` new images numbered from `first`: into one new folder (an import: the catalog's path
    index grows at one place) or one into each of 1,000 folders (each a leaf page of the path index)."""
    items = [synthetic_item(first + i, np.arange(first + added)) for i in range(added)]
    if folders == "a new folder":
        items = [replace(item, path=f"/photos/new-{first}/{item.id:08d}.jpg") for item in items]
    vectors = space.array(added, stream=7 + added)
    return Change(items, lambda out, v=vectors: np.copyto(out, v), first + added, layout)


def report_updates(directory: Path, count: int, index_type: str, space: ClipLikeSpace) -> None:
    """Add 1 and 1,000 images and delete 1,000 on the index of `count` at `directory`, against rewriting
    it whole (what every build did before segments: all vectors copied, the FAISS index trained and
    tuned again). The scattered add also on a copy whose catalog indexes are packed full: as a first
    build in path order or one CREATE INDEX leaves them, so that each add splits a leaf page."""
    layout = Layout(index_type, None)
    packed = tiled_store(directory.with_name(directory.name + "-packed"), directory, 1)
    packed.close()
    rows = []
    first = count
    for added, where, target in ((1, "a new folder", directory), (1000, "a new folder", directory),
                                 (1000, "1,000 folders, one each", directory), (1000, "1,000 folders, one each", packed.path.parent)):
        seconds, written = _commit(target, _added(first, added, where, space, layout))
        packing = ", catalog indexes packed" if target != directory else ""
        rows.append([f"add {added:,} into {where}{packing}", added, seconds, format_size(written), f"{written / added / 1024:.1f} KB"])
        first += added
    shutil.rmtree(packed.path.parent)
    deleted = Change([], lambda out: None, first, layout, replaced={1: list(range(1000))})
    seconds, written = _commit(directory, deleted)
    rows.append(["delete 1,000", 1000, seconds, format_size(written), f"{written / 1000 / 1024:.1f} KB"])
    catalog = Catalog(directory / CATALOG)
    before = _written()
    seconds, _ = timed(lambda: merge_all(directory, catalog, index_type, None))
    rows.append(["baseline: rewrite the whole index", count, seconds, format_size(_written() - before), "—"])
    catalog.close()
    print(table(
        f"Updates of an index of {count:,} ({index_type})",
        ["change", "images", "seconds", "bytes written", "per image"],
        rows,
        ["Model excluded: the vectors are given, as the staging holds them after embedding. Bytes are what reached the disk "
         f"(/proc/self/io write_bytes). Machine: {machine()}."],
    ))


def report_open_and_filters(store_dir: Path, count: int, index_type: str, queries: int = QUERIES) -> None:
    old_dir = store_dir.with_name(f"format1-{index_type}")
    write_format1(old_dir, store_dir, count)
    opened, baseline, legacy = measure_open(store_dir, "store"), measure_open(old_dir, "format1"), measure_open(old_dir, "store")
    mb = lambda row: f"{row['rss_beyond_faiss'] / 2**20:.0f} MB"  # noqa: E731
    print(table(
        f"Open an index of {count:,} and answer the first query ({index_type})",
        ["index, opened by", "seconds", "memory beyond the FAISS index", "speed-up"],
        [["format 1, by the format-1 reader (baseline)", baseline["seconds"], mb(baseline), 1.0],
         ["format 1, by this tusou (before its next build converts it)", legacy["seconds"], mb(legacy), baseline["seconds"] / legacy["seconds"]],
         ["format 2 (segments + SQLite)", opened["seconds"], mb(opened), baseline["seconds"] / opened["seconds"]]],
        [f"Each in a fresh process; memory = peak resident set added by opening and the first query, less the index's own data "
         f"(the FAISS file the format-1 reader reads whole; the pages of mapped segment files that were touched). Machine: {machine()}."],
    ))
    shutil.rmtree(old_dir, ignore_errors=True)
    rows = [FilterRow(**row) for row in in_fresh_process("filters", store_dir, queries)]
    unfiltered = rows[0].recall
    print(table(
        f"Filtered top-10 over {count:,} ({index_type}, unfiltered recall@10 {unfiltered:.3f})",
        ["filter", "matching", "first query p50 ms", "p50 ms", "p90 ms", "recall@10 in filter"],
        [[r.name, r.matching, r.first_p50_ms, r.p50_ms, r.p90_ms, f"{r.recall:.3f}"] for r in rows],
        [f"{queries} CLIP-like text queries. First query: the filter's catalog reads included; the others: further queries "
         f"with the same filter, whose matching rows the view keeps. Recall against a brute-force scan of the matching items. "
         f"Machine: {machine()}."],
    ))
    fetched, post, ratio = in_fresh_process("fetched", store_dir, queries, "10% (one year)")
    print(table(
        f"A filter's first query at 10% over {count:,} ({index_type}): its rows fetched and selected, against post-filtered",
        ["plan", "p50 ms", "speed-up"],
        [["post-filtered: search widened ×10, candidates checked in SQLite (baseline)", post, 1.0],
         ["rows fetched from SQLite, search restricted to them by a bitmap", fetched, ratio]],
        [f"The two in turn, query by query, {queries} queries; speed-up = median of the per-query ratios. Machine: {machine()}."],
    ))


def tiled_filters(directory: str, queries: int) -> list[list]:
    """Per selectivity (none first): a filter's first query (its catalog reads included) and further
    queries with it, p50 ms."""
    view, vectors, rows = open_store(directory).view(), _queries(queries), []
    for name, spec in [("none (unfiltered)", None), *SELECTIVITIES.items()]:
        first, further, _ = first_and_further(view, make_filters(**spec) if spec else Filters(), vectors)
        rows.append([name, np.median(first) * 1000, np.median(further) * 1000])
    return rows


FRESH = {"open": open_and_query, "filters": measure_filters, "fetched": fetched_against_post_filtered, "tiled": tiled_filters}
"""What in_fresh_process runs, by name."""


def report_tiled(store_dir: Path, copies: int, queries: int) -> None:
    """Opening and the first query, and filtered latency, at `copies` × the store at `store_dir` (tiled_store)."""
    tiled = store_dir.with_name(store_dir.name + f"-x{copies}")
    seconds, catalog = timed(lambda: tiled_store(tiled, store_dir, copies))
    count, kind = sum(row.count for row in catalog.segments()), catalog.segments()[0].index_entry.type
    catalog.close()
    opened = [measure_open(tiled, "store") for _ in range(3)]
    rows = in_fresh_process("tiled", tiled, queries)
    built = (f"The store is {copies} copies of the {count // copies:,}-vector segment above (vectors and FAISS file hard-linked, "
             f"each copy its own ids and catalog rows; built in {seconds:.0f} s). Machine: {machine()}.")
    print(table(
        f"Open an index of {count:,} ({copies} {kind} segments) and answer the first query",
        ["run", "seconds", "memory beyond the index's data"],
        [[f"fresh process {n}", o["seconds"], f"{o['rss_beyond_faiss'] / 2**20:.0f} MB"] for n, o in enumerate(opened, 1)],
        [built],
    ))
    print(table(
        f"Filtered top-10 over {count:,} ({copies} {kind} segments)",
        ["filter", "first query p50 ms", "further queries p50 ms"],
        rows,
        [f"{queries} queries; recall is not measured here, as every vector is there {copies} times. {built}"],
    ))
    shutil.rmtree(tiled, ignore_errors=True)


def report_merges(folder: Path, args: argparse.Namespace) -> None:
    cost = merge_cost(folder, args.merge_segments, args.merge_rows, args.merge_type)
    recall = merged_recall(folder, args.recall_count, index_type=args.merge_type)
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




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="vectors of the open and filter measurements")
    parser.add_argument("--types", default="ivf,hnsw", help="index types of the open and filter measurements")
    parser.add_argument("--recall-count", type=int, default=200_000, help="vectors of the segments-vs-merged recall measurement")
    parser.add_argument("--merge-segments", type=int, default=10)
    parser.add_argument("--merge-rows", type=int, default=10_000, help="rows of each merged segment")
    parser.add_argument("--merge-type", default="hnsw")
    parser.add_argument("--queries", type=int, default=QUERIES, help="queries of the filter measurements")
    parser.add_argument("--no-updates", action="store_true", help="skip the updates and their whole-index rewrite (long at 10M)")
    parser.add_argument("--tile", type=int, default=0, help="also open an index of TILE copies of each store (10: 10M from 1M)")
    parser.add_argument("--dir", type=Path, help="where to write the stores (default: a temporary folder)")
    parser.add_argument("--fresh", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fresh:
        measure, *rest = args.fresh
        return print(json.dumps(FRESH[measure](*rest)))
    space = ClipLikeSpace(dim=DIM)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        for index_type in args.types.split(","):
            store_dir = Path(folder) / f"store-{index_type}"
            synthetic_store(store_dir, space, [(args.count, index_type)]).close()
            report_open_and_filters(store_dir, args.count, index_type, args.queries)
            if args.tile:
                report_tiled(store_dir, args.tile, args.queries)
            if not args.no_updates:
                report_updates(store_dir, args.count, index_type, space)
            shutil.rmtree(store_dir, ignore_errors=True)
        report_merges(Path(folder), args)


if __name__ == "__main__":
    main()
