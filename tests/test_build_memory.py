"""What a build holds while it compares the collection with the index and commits: one item at a
time, read from SQLite, never the collection's (the build held every item twice before, ~1.5 KB an
image: 128 GB of driver for a build of 100M). bench/build_memory.py measures the bytes."""

from __future__ import annotations

import gc
import sqlite3

from bench.build_memory import DIM, MODEL, old_path, scanned, write_inputs
from indexer.build import commit_staged, compare
from indexer.plan import Layout
from indexer.staging import Staging
from retrieval.store.records import CatalogItem, ImageRecord
from retrieval.store.store import open_store
from tests.stored import read_back

FLAT = Layout("flat", None)
COUNT = 2000
RECORDS = (ImageRecord, CatalogItem)


class MostAlive:
    """The most records (ImageRecord, CatalogItem) alive at once, looked at every so many SQLite
    instructions of the connections watched: while the build reads the catalog or the staging, and
    while it writes the catalog's transaction."""

    def __init__(self, *connections: sqlite3.Connection):
        self.most = 0
        for db in connections:
            db.set_progress_handler(self._look, 20_000)

    def _look(self) -> int:
        self.most = max(self.most, sum(1 for found in gc.get_objects() if type(found) in RECORDS))
        return 0  # go on


def test_comparing_and_committing_hold_one_item_at_a_time(tmp_path):
    """An index of COUNT items, half of them changed, and COUNT / 2 new images, all staged."""
    out = tmp_path / "index"
    write_inputs(out, COUNT, update=True, layout=FLAT)
    previous, files = open_store(out), scanned(COUNT, update=True)
    staging = Staging(out / "staging", MODEL)
    alive = MostAlive(previous.catalog.db, staging.db)
    compared = compare(files, previous.catalog)
    summary = commit_staged(out, previous, MODEL, DIM, compared, staging, FLAT, FLAT, progress=False).to_dict()
    staging.close()
    previous.close()

    assert 0 < alive.most <= 5, f"{alive.most} records alive at once"
    assert {key: summary[key] for key in ("added", "updated", "unchanged", "removed", "total")} == dict(
        added=COUNT // 2, updated=COUNT // 2, unchanged=COUNT // 2, removed=0, total=3 * COUNT // 2)
    index = read_back(out)
    ids = {item.path: item.id for item in index.items}
    assert [ids[old_path(i)] for i in range(COUNT)] == list(range(COUNT)), "changed and unchanged images keep their ids"
    new = sorted(path for path in ids if path.startswith("/photos/new/"))
    assert [ids[path] for path in new] == list(range(COUNT, 3 * COUNT // 2)), "new ones are numbered on, in path order"
    assert [(row.count, row.deleted) for row in index.segments] == [(COUNT, COUNT // 2), (COUNT, 0)]
