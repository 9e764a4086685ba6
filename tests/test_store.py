"""The segment store read side: segments merged into one top-k, deletions, filters planned by how
many items match, views that follow commits, and a format-1 index opened as it is."""

from __future__ import annotations

import numpy as np
import pytest

from bench.vectors import ClipLikeSpace
from indexer.segment_writer import write_deletions, write_segment
from retrieval.search.filters import make_filters
from retrieval.store import segment as segment_module
from retrieval.store import store as store_module
from retrieval.store.catalog import Catalog, item_values, put_items, put_segment, put_setting
from retrieval.store.manifest import Manifest, write_manifest
from retrieval.store.model_ref import ModelRef
from retrieval.store.records import CatalogItem
from retrieval.store.store import CATALOG, StaleView, open_store

DIM = 64


def item(i: int, folder: str, fmt: str = "jpeg") -> CatalogItem:
    return CatalogItem(f"/photos/{folder}/{i:05d}.jpg", 1, 10**18 + i, "", 4, 3, id=i, format=fmt, taken=f"2024-{1 + i % 12:02d}-01T00:00:00")


def make_store(directory, vectors: np.ndarray, sizes: list[int], kind: str = "flat"):
    """Segments of `sizes` rows over `vectors` in order; item i is vector i."""
    directory.mkdir()
    write_manifest(directory, Manifest(ModelRef("test-tiny", "f"), DIM))
    catalog = Catalog(directory / CATALOG, create=True)
    start, rows = 0, []
    for number, size in enumerate(sizes, 1):
        ids = np.arange(start, start + size)
        chunk = vectors[start : start + size]
        rows.append(write_segment(directory, number, ids, DIM, lambda out, chunk=chunk: np.copyto(out, chunk), kind, None))
        start += size
    with catalog.transaction() as db:
        put_items(db, (item_values(item(i, "a" if i % 2 else "b", "png" if i % 5 == 0 else "jpeg"), s, r)
                       for s, row in enumerate(rows, 1) for r, i in enumerate(range(sum(sizes[: s - 1]), sum(sizes[:s])))))
        for row in rows:
            put_segment(db, row)
        put_setting(db, "generation", 1)
    return catalog, rows


@pytest.fixture(scope="module")
def space():
    clip_like = ClipLikeSpace(dim=DIM, clusters=64, seed=5)
    return clip_like.array(3000).astype(np.float16), clip_like.array(20, queries=True, stream=1)


def brute(vectors, query, allowed, k):
    scores = vectors[allowed].astype(np.float32) @ query
    return allowed[np.lexsort((allowed, -scores))[:k]].tolist()


def test_segments_answer_as_one_exact_index(tmp_path, space):
    vectors, queries = space
    make_store(tmp_path / "ix", vectors, [2000, 700, 300])
    view = open_store(tmp_path / "ix").view()
    assert len(view) == 3000
    _, positions = view.search(queries, 10)
    for query, found in zip(queries, positions):
        assert view.ids(found).tolist() == brute(vectors, query, np.arange(3000), 10)


@pytest.mark.parametrize("scan_rows, fetch_share", [(20_000, 0.2), (10, 0.2), (10, 0.0)], ids=["scanned", "selected", "post-filtered"])
def test_a_filter_gives_the_top_k_of_the_matching_items(tmp_path, space, monkeypatch, scan_rows, fetch_share):
    """Every plan: few matches scanned exactly, more fetched and selected in FAISS, too many to fetch
    post-filtered (flat segments: exact each way)."""
    monkeypatch.setattr(store_module, "SCAN_ROWS", scan_rows)
    monkeypatch.setattr(segment_module, "SCAN_ROWS", scan_rows)
    monkeypatch.setattr(store_module, "FETCH_SHARE", fetch_share)
    vectors, queries = space
    make_store(tmp_path / "ix", vectors, [2000, 1000])
    view = open_store(tmp_path / "ix").view()
    filters = make_filters(folders=["/photos/a"], types="png")
    allowed = np.array([i for i in range(3000) if i % 2 and i % 5 == 0])
    for query in queries:
        _, positions = view.search(query, 10, filters)
        assert view.ids(positions[0]).tolist() == brute(vectors, query, allowed, 10)


def test_deleted_rows_never_come_back_and_a_view_follows_commits(tmp_path, space):
    vectors, queries = space
    catalog, rows = make_store(tmp_path / "ix", vectors, [2000, 1000])
    store = open_store(tmp_path / "ix")
    before = store.view()
    _, top = before.search(queries[0], 5)
    gone = before.ids(top[0])
    segment_rows = {row.id: row for row in rows}
    with catalog.transaction() as db:
        for position in top[0]:
            s = int(np.searchsorted(before.bases, position, side="right"))
            updated = write_deletions(tmp_path / "ix", segment_rows[s], [position - before.bases[s - 1]], 2)
            segment_rows[s] = updated
            put_segment(db, updated)
        db.executemany("DELETE FROM items WHERE id = ?", [(int(i),) for i in gone])
        put_setting(db, "generation", 2)
    after = store.view()
    assert after is not before and len(after) == 2995 and len(before) == 3000
    _, found = after.search(queries[0], 10)
    assert not set(after.ids(found[0]).tolist()) & set(gone.tolist())
    assert store.view() is after
    # the rows of a result are read as of its view: the older view's reads are stale, not a mix of two commits
    with pytest.raises(StaleView):
        before.items(gone.tolist())
    assert after.items(gone.tolist()) == {} and set(after.items(after.ids(found[0]).tolist())) == set(after.ids(found[0]).tolist())


def test_nothing_matching_is_no_results(tmp_path, space):
    vectors, queries = space
    make_store(tmp_path / "ix", vectors, [3000])
    scores, positions = open_store(tmp_path / "ix").view().search(queries[:2], 5, make_filters(types="gif"))
    assert (positions == -1).all() and np.isneginf(scores).all()


def test_a_view_reads_what_a_filter_matches_once_and_a_commit_is_seen_by_the_next_view(tmp_path, space):
    vectors, queries = space
    catalog, _ = make_store(tmp_path / "ix", vectors, [2000, 1000])
    store = open_store(tmp_path / "ix")
    view, pngs = store.view(), make_filters(types="png")
    reads: list[str] = []
    view.search(queries[0], 10, pngs)
    store.catalog.db.set_trace_callback(lambda sql: reads.append(sql) if "FROM items" in sql else None)
    first = view.search(queries[1], 10, pngs)
    view.search(queries[2], 10, pngs)
    assert reads == [] and (first[1] >= 0).all()
    store.catalog.db.set_trace_callback(None)
    with catalog.transaction() as db:  # every png becomes a jpeg: the next view's filter matches nothing
        db.execute("UPDATE items SET format = 'jpeg'")
        put_setting(db, "generation", 2)
    later = store.view()
    assert later is not view and (later.search(queries[0], 10, pngs)[1] == -1).all()
