"""The SQLite catalog: atomic transactions, lookups and filters as queries, damage as one line."""

from __future__ import annotations

import json
import os
import sqlite3

import numpy as np
import pytest

from retrieval.errors import TusouError
from retrieval.search.filters import make_filters
from retrieval.store.catalog import ITEM_COLUMNS, Catalog, name_value, put_items


def row(item_id: int, segment: int, row_: int, **metadata) -> tuple:
    values = dict(id=item_id, path=f"/p/{segment}/{item_id}.jpg", size=1, mtime_ns=0, sha256="", width=4, height=3,
                  change_key=None, segment=segment, row=row_, taken=None, taken_from="mtime", taken_offset=None, camera=None,
                  latitude=None, longitude=None, orientation=None, format="jpeg", folder=f"/p/{segment}") | metadata
    return tuple(values[c] for c in ITEM_COLUMNS)


def fill(catalog: Catalog, rows: list[tuple]) -> None:
    with catalog.transaction() as db:
        db.executemany(f"INSERT INTO items VALUES ({', '.join('?' * len(ITEM_COLUMNS))})", rows)
        db.execute("INSERT INTO segments VALUES (1, 3, 0, ?, ?)", (json.dumps(FILES), json.dumps({"type": "flat"})))


FILES = {"vectors": "segments/000001.vectors.npy", "ids": "segments/000001.ids.npy", "faiss": "segments/000001.faiss"}


def test_items_and_segments_are_queries_and_filters_give_rows_per_segment(tmp_path):
    catalog = Catalog(tmp_path / "catalog.sqlite", create=True)
    fill(catalog, [row(0, 1, 0, taken="2024-06-01T10:00:00"), row(1, 1, 1, format="png"), row(2, 2, 0, taken="2024-06-20T10:00:00")])
    assert catalog.count() == 3
    assert [s.files for s in catalog.segments()] == [FILES]
    assert catalog.items([2, 0, 99]).keys() == {0, 2} and catalog.items([1])[1]["format"] == "png"
    found = catalog.matching_rows(make_filters(after="2024-06"))
    assert {segment: rows.tolist() for segment, rows in found.items()} == {1: [0], 2: [0]}
    assert catalog.matching_rows(make_filters(types="gif")) == {}


def test_the_keys_under_a_shard_are_its_members_whatever_their_names(tmp_path):
    """A shard's members, found by a range of the path index: a member name that is not UTF-8 is stored as
    bytes, and so are all the members of a shard whose own name is not UTF-8."""
    odd = os.fsdecode(b"\xff\xfe")
    paths = {"/s/a.tar#x.jpg": "a1", f"/s/a.tar#{odd}.jpg": "a2", "/s/a.tar#x#y.jpg": "a3", "/s/a.tarx#z.jpg": "other",
             "/s/a.tar": "the shard itself", "/s/b.tar#x.jpg": "b", f"/s/{odd}.tar#m.jpg": "odd"}
    catalog = Catalog(tmp_path / "catalog.sqlite", create=True)
    fill(catalog, [row(i, 1, i, path=name_value(path), change_key=key) for i, (path, key) in enumerate(paths.items())])
    assert catalog.keys_under("/s/a.tar#") == {"a1", "a2", "a3"}
    assert catalog.keys_under(f"/s/{odd}.tar#") == {"odd"} and catalog.keys_under("/s/c.tar#") == set()


def test_a_failed_transaction_changes_nothing(tmp_path):
    catalog = Catalog(tmp_path / "catalog.sqlite", create=True)
    with pytest.raises(RuntimeError):
        with catalog.transaction() as db:
            db.execute(f"INSERT INTO items VALUES ({', '.join('?' * len(ITEM_COLUMNS))})", row(0, 1, 0))
            raise RuntimeError("killed half-way")
    assert catalog.count() == 0


def test_two_items_never_share_a_path_and_an_item_replaced_keeps_its_own(tmp_path):
    catalog = Catalog(tmp_path / "catalog.sqlite", create=True)
    fill(catalog, [row(0, 1, 0), row(1, 1, 1)])
    with pytest.raises(sqlite3.IntegrityError, match="one path"):
        with catalog.transaction() as db:
            put_items(db, [row(7, 2, 0, path="/p/1/0.jpg")])
    with catalog.transaction() as db:  # a changed image: the same id and path, on a new row
        put_items(db, [row(0, 2, 0, path="/p/1/0.jpg", size=2)])
    assert catalog.count() == 2 and catalog.items([0])[0]["size"] == 2 and catalog.items([7]) == {}


def test_a_reader_sees_a_commit_whole_or_not_at_all(tmp_path):
    writer = Catalog(tmp_path / "catalog.sqlite", create=True)
    reader = Catalog(tmp_path / "catalog.sqlite")
    with reader.snapshot() as db:
        before = db.execute("SELECT count(*) FROM items").fetchone()[0]
        fill(writer, [row(i, 1, i) for i in range(3)])  # commits while the reader's snapshot is open
        assert db.execute("SELECT count(*) FROM items").fetchone()[0] == before == 0
        assert writer.segments() and not reader.segments(db)
    assert reader.count() == 3 and len(reader.segments()) == 1


@pytest.mark.parametrize("content", [b"", b"not a database at all" * 100])
def test_a_damaged_or_missing_catalog_is_one_line_naming_the_file(tmp_path, content):
    path = tmp_path / "catalog.sqlite"
    with pytest.raises(TusouError, match="catalog.sqlite is missing"):
        Catalog(path)
    path.write_bytes(content)
    with pytest.raises(TusouError, match=r"catalog.sqlite is damaged .*: delete .* and rebuild it") as caught:
        Catalog(path)
    assert "\n" not in str(caught.value)


def test_matching_rows_come_back_sorted_per_segment(tmp_path):
    catalog = Catalog(tmp_path / "catalog.sqlite", create=True)
    rng = np.random.default_rng(0)
    rows = [row(i, int(s), int(r)) for i, (s, r) in enumerate(zip(rng.integers(1, 4, 300), rng.permutation(300)))]
    fill(catalog, rows)
    for segment, found in catalog.matching_rows(make_filters()).items():
        expected = sorted(r[ITEM_COLUMNS.index("row")] for r in rows if r[ITEM_COLUMNS.index("segment")] == segment)
        assert found.tolist() == expected
