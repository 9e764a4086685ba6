"""Merges on real stores (real FAISS, real files): the policy's merges and a reindex answer as the
segments did, drop deleted rows for good, survive a kill at any step, and never pull files from
under a reader."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.vectors import ClipLikeSpace
from indexer.build import build_lock
from indexer.faiss_build import exact_neighbours, recall_at_k, tuning_queries
from indexer.merge import merge_all, merge_as_policy_says, stored_layout
from indexer.merge_policy import plan_merges
from indexer.plan import Layout
from indexer.reindex import reindex
from indexer.segment_writer import write_deletions
from retrieval.errors import TusouError
from retrieval.store.catalog import Catalog, bump_generation, drop_items, put_segment
from retrieval.store.store import CATALOG, open_store
from tests.test_store import DIM, make_store
from ui.cli import main

SMALL = [3] * 11 + [40] * 10
"""Tier 0 overflows; its merge (33 rows) then makes tier 1 overflow: two merges, one after the other."""


@pytest.fixture(scope="module")
def space():
    clip_like = ClipLikeSpace(dim=DIM, clusters=64, seed=5)
    return clip_like.array(60_000).astype(np.float16), clip_like.array(20, queries=True, stream=1)


def brute(vectors: np.ndarray, query: np.ndarray, ids: np.ndarray, k: int) -> list[int]:
    scores = vectors[ids].astype(np.float32) @ query
    return ids[np.lexsort((ids, -scores))[:k]].tolist()


def top_ids(directory: Path, queries: np.ndarray, k: int = 10) -> list[list[int]]:
    view = open_store(directory).view()
    return [view.ids(found[found >= 0]).tolist() for found in view.search(queries, k)[1]]


def delete(directory: Path, catalog: Catalog, ids: list[int]) -> None:
    """Delete items as a build does: a new deletion record per touched segment, one transaction."""
    places = catalog.db.execute(f"SELECT segment, row FROM items WHERE id IN ({', '.join('?' * len(ids))})", ids).fetchall()
    rows = {row.id: row for row in catalog.segments()}
    generation = int(catalog.setting("generation", 0)) + 1
    touched = {segment: [r for s, r in places if s == segment] for segment, _ in places}
    updated = [write_deletions(directory, rows[segment], np.array(found), generation) for segment, found in touched.items()]
    with catalog.transaction() as db:
        for row in updated:
            put_segment(db, row)
        drop_items(db, ids)
        bump_generation(db)


def check_items_point_at_their_vectors(directory: Path, vectors: np.ndarray) -> None:
    """Every item's (segment, row) holds its own vector and id: the catalog moved with the rows."""
    store = open_store(directory)
    view = store.view()
    bases = {segment.id: base for segment, base in zip(view.segments, view.bases)}
    ids, segments, rows = np.array(store.catalog.db.execute("SELECT id, segment, row FROM items ORDER BY id").fetchall()).T
    positions = np.array([bases[s] for s in segments]) + rows
    assert view.ids(positions).tolist() == ids.tolist()
    np.testing.assert_array_equal(view.vectors(positions), vectors[ids])
    assert len(view) == len(ids)


def test_many_small_segments_merge_as_the_policy_says_and_answer_the_same(tmp_path, space):
    vectors, queries = space
    sizes = SMALL + [300, 300]
    catalog, _ = make_store(tmp_path / "ix", vectors, sizes)
    before = top_ids(tmp_path / "ix", queries)

    with build_lock(tmp_path / "ix"):
        written = merge_as_policy_says(tmp_path / "ix", catalog, Layout("hnsw", None))

    rows = catalog.segments()
    assert written == [24, 25] and [row.id for row in rows] == [22, 23, 25]  # the two 300s, and the 433 rows merged
    assert [(row.count, row.deleted, row.index_entry.type) for row in rows][-1] == (433, 0, "flat")  # small: exact
    assert plan_merges(rows) == []
    assert top_ids(tmp_path / "ix", queries) == before
    everything = np.arange(sum(sizes))
    assert before == [brute(vectors, query, everything, 10) for query in queries]
    check_items_point_at_their_vectors(tmp_path / "ix", vectors)
    named = {Path(name).name for row in rows for name in row.files.values()}
    assert {path.name for path in (tmp_path / "ix" / "segments").iterdir()} == named
    assert catalog.setting("generation") == 3 and catalog.setting("next_segment") == 26


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_a_large_merge_is_built_as_the_layout_says_and_tuned(tmp_path, space, kind):
    """Eleven exact segments of 5,000 overflow their tier; 55,000 rows are past FLAT_UP_TO, so the
    merged segment is of the layout's type, and its recall on fresh queries is what its tuning measured."""
    vectors = space[0][:55_000]
    catalog, _ = make_store(tmp_path / "ix", vectors, [5000] * 11)
    with build_lock(tmp_path / "ix"):
        merge_as_policy_says(tmp_path / "ix", catalog, Layout(kind, None))
    (row,) = catalog.segments()
    assert (row.count, row.index_entry.type, row.index_entry.requested) == (55_000, kind, kind)
    tuned = row.index_entry.search["recall_at_10"]
    assert tuned >= 0.95
    queries = tuning_queries(vectors, 1000, seed=1)  # drawn as the tuning's were, not the same ones
    view = open_store(tmp_path / "ix").view()
    found = np.array([view.ids(positions) for positions in view.search(queries, 10)[1]])
    assert recall_at_k(found, exact_neighbours(vectors, queries, 10)) >= tuned - 0.02
    check_items_point_at_their_vectors(tmp_path / "ix", vectors)


def test_deleted_rows_are_dropped_by_a_merge_and_never_come_back(tmp_path, space):
    vectors, queries = space
    catalog, _ = make_store(tmp_path / "ix", vectors, [600, 300, 100])
    gone = sorted({*top_ids(tmp_path / "ix", queries[:5], 3)[0], *range(0, 600, 4), *range(650, 700)})
    delete(tmp_path / "ix", catalog, gone)
    by_segment = np.bincount(np.searchsorted([600, 900], gone, side="right"), minlength=3)
    assert [(row.count, row.deleted) for row in catalog.segments()] == list(zip([600, 300, 100], by_segment.tolist()))
    with build_lock(tmp_path / "ix"):
        written = merge_as_policy_says(tmp_path / "ix", catalog, Layout("auto", None))
    rows = catalog.segments()
    assert len(written) == 1 and rows[0].id == 2 and rows[-1].id == written[0]  # the 600 lost over a fifth: rewritten alone
    assert sum(row.live for row in rows) == 1000 - len(gone) and rows[-1].deleted == 0
    live = np.setdiff1d(np.arange(1000), gone)
    for query, found in zip(queries, top_ids(tmp_path / "ix", queries, 20)):
        assert found == brute(vectors, query, live, 20) and not set(found) & set(gone)

    with build_lock(tmp_path / "ix"):
        merged = merge_all(tmp_path / "ix", catalog, "flat", None)
    assert catalog.segments() == [merged] and (merged.count, merged.deleted) == (len(live), 0)
    assert "deleted" not in merged.files
    for query, found in zip(queries, top_ids(tmp_path / "ix", queries, 20)):
        assert found == brute(vectors, query, live, 20)
    check_items_point_at_their_vectors(tmp_path / "ix", vectors)


def test_a_segment_all_deleted_is_dropped(tmp_path, space):
    vectors, queries = space
    catalog, _ = make_store(tmp_path / "ix", vectors, [500, 50])
    delete(tmp_path / "ix", catalog, list(range(500, 550)))
    with build_lock(tmp_path / "ix"):
        assert merge_as_policy_says(tmp_path / "ix", catalog, Layout("auto", None)) == []
    assert [row.id for row in catalog.segments()] == [1]
    assert sorted(p.name for p in (tmp_path / "ix" / "segments").iterdir()) == ["000001.faiss", "000001.ids.npy", "000001.vectors.npy"]
    check_items_point_at_their_vectors(tmp_path / "ix", vectors)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_reindex_gives_one_tuned_segment_of_the_type_and_keeps_it(tmp_path, space, kind):
    vectors, queries = space
    catalog, _ = make_store(tmp_path / "ix", vectors, [2000, 700, 300])
    delete(tmp_path / "ix", catalog, list(range(0, 3000, 7)))
    live = np.setdiff1d(np.arange(3000), np.arange(0, 3000, 7))

    done = reindex(tmp_path / "ix", kind, progress=False)

    rows = catalog.segments()
    assert [(row.count, row.deleted, row.index_entry.type) for row in rows] == [(len(live), 0, kind)]
    assert (done.count, done.merged, done.entry, done.converted) == (len(live), 3, rows[0].index_entry, False)
    assert "recall_at_10" in done.entry.search and (kind == "flat" or done.entry.search["recall_at_10"] >= 0.9)
    assert stored_layout(catalog) == Layout(kind, None)
    found = top_ids(tmp_path / "ix", queries)
    truth = [brute(vectors, query, live, 10) for query in queries]
    assert recall_at_k(np.array(found), np.array(truth)) >= (1.0 if kind == "flat" else 0.9)
    check_items_point_at_their_vectors(tmp_path / "ix", vectors)

    again = reindex(tmp_path / "ix", progress=False)  # no type asked: the layout's
    assert (again.merged, again.entry.type, again.entry.requested) == (1, kind, kind)


def test_reindex_repairs_a_damaged_faiss_file_from_the_vectors(tmp_path, space):
    vectors, queries = space
    catalog, rows = make_store(tmp_path / "ix", vectors, [2000, 1000])
    before = top_ids(tmp_path / "ix", queries)
    faiss_file = tmp_path / "ix" / rows[1].files["faiss"]
    faiss_file.write_bytes(faiss_file.read_bytes()[:100])
    with pytest.raises(TusouError, match=f"`tusou reindex {tmp_path / 'ix'}`"):
        open_store(tmp_path / "ix").view()
    assert reindex(tmp_path / "ix", progress=False).entry.type == "flat"  # auto at 3,000 rows
    assert top_ids(tmp_path / "ix", queries) == before and not faiss_file.exists()


def test_cli_reindex_says_what_it_merged(tmp_path, space, capsys):
    vectors, _ = space
    make_store(tmp_path / "ix", vectors, [2000, 1000])
    assert main(["reindex", str(tmp_path / "ix"), "--index-type", "hnsw"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{tmp_path / 'ix'}: 3000 images, 2 segments merged into one, hnsw [M 32, ef_search ")
    assert line.endswith(" vs exact")
    assert main(["reindex", str(tmp_path / "ix"), "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert (entry["type"], entry["requested"]) == ("hnsw", "hnsw") and entry["search"]["recall_at_10"] >= 0.9
    files = sorted((tmp_path / "ix" / "segments").iterdir())
    assert main(["reindex", str(tmp_path / "ix"), "--index-type", "ivfpq", "--max-index-memory", "1K"]) == 2
    error = capsys.readouterr().err
    assert "over the 1.0 KB budget" in error and error.count("\n") == 1
    assert [row.index_entry.type for row in Catalog(tmp_path / "ix" / CATALOG).segments()] == ["hnsw"]
    assert sorted((tmp_path / "ix" / "segments").iterdir()) == files


def test_a_view_opened_before_a_merge_keeps_answering_after_it(tmp_path, space):
    vectors, queries = space
    catalog, _ = make_store(tmp_path / "ix", vectors, SMALL)
    store = open_store(tmp_path / "ix")
    old = store.view()
    _, positions = old.search(queries, 10)
    before = [old.ids(found).tolist() for found in positions]

    with build_lock(tmp_path / "ix"):
        merge_as_policy_says(tmp_path / "ix", catalog, Layout("auto", None))
    assert not (tmp_path / "ix" / "segments" / "000001.vectors.npy").exists()  # its files are gone, its mappings are not

    _, again = old.search(queries, 10)
    assert [old.ids(found).tolist() for found in again] == before
    np.testing.assert_array_equal(old.vectors(again[0]), vectors[before[0]])
    new = store.view()
    assert new is not old and len(new.segments) == 1 and len(new) == len(old)
    assert [new.ids(found).tolist() for found in new.search(queries, 10)[1]] == before


MERGE = """
import sys
from pathlib import Path
from indexer.build import build_lock
from indexer.merge import merge_as_policy_says
from indexer.plan import Layout
from retrieval.store.catalog import Catalog
directory = Path(sys.argv[1])
with build_lock(directory):
    merge_as_policy_says(directory, Catalog(directory / "catalog.sqlite"), Layout("auto", None))
"""


def state(directory: Path, queries: np.ndarray) -> dict:
    catalog = Catalog(directory / CATALOG)
    segments = [(row.id, row.count, row.deleted, row.files, row.index_entry.type) for row in catalog.segments()]
    files = {path.name: path.read_bytes() for path in sorted((directory / "segments").iterdir())}
    places = catalog.db.execute("SELECT id, segment, row FROM items ORDER BY id").fetchall()
    return {"segments": segments, "files": files, "items": places, "found": top_ids(directory, queries),
            "settings": (catalog.setting("next_segment"), catalog.setting("generation"))}


@pytest.mark.parametrize("point", ["segment:1", "written:000022:1", "merge:1", "merge:2"])
def test_a_killed_merge_leaves_the_old_state_and_the_rerun_equals_an_uninterrupted_one(tmp_path, space, point):
    """Killed with the first merge's files written (or half written), or the second's: a reader
    searches the whole time, sees the state before the merge (or after the first), and the next run
    ends where an uninterrupted one does, nothing left behind."""
    vectors, queries = space[0], space[1][:5]
    catalog, _ = make_store(tmp_path / "ix", vectors, SMALL)
    delete(tmp_path / "ix", catalog, [400, 401])
    before = state(tmp_path / "ix", queries)
    shutil.copytree(tmp_path / "ix", tmp_path / "reference")
    with build_lock(tmp_path / "reference"):
        merge_as_policy_says(tmp_path / "reference", Catalog(tmp_path / "reference" / CATALOG), Layout("auto", None))
    reference = state(tmp_path / "reference", queries)

    merge = subprocess.Popen([sys.executable, "-c", MERGE, str(tmp_path / "ix")], env=dict(os.environ, TUSOU_KILL_AT=point))
    store, searched = open_store(tmp_path / "ix"), 0
    while merge.poll() is None:  # a reader searches all through the merge, never failing
        assert store.view().search(queries[:1], 10)[1][0].tolist() != [-1] * 10
        searched += 1
    assert merge.returncode == -signal.SIGKILL, f"the merge was not killed at {point}"
    assert searched > 0
    killed = state(tmp_path / "ix", queries)
    assert killed["found"] == before["found"] == reference["found"]
    if point == "merge:2":
        assert len(killed["segments"]) == 11  # the first merge committed: tier 1 holds the ten 40s and the 33
    else:
        assert (killed["segments"], killed["items"], killed["settings"]) == (before["segments"], before["items"], before["settings"])

    with build_lock(tmp_path / "ix"):
        merge_as_policy_says(tmp_path / "ix", Catalog(tmp_path / "ix" / CATALOG), Layout("auto", None))
    assert state(tmp_path / "ix", queries) == reference  # the files in segments/ too: nothing left behind
