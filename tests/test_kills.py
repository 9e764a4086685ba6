"""SIGKILL an index update at exact steps of every stage; the next run must finish the job.

Each case starts from an index of collection A, changes the folder to B (two files gone,
twenty new, one rewritten), runs `build_index` in a subprocess that kills itself at one
kill point (retrieval/store/faults.py), and checks: a reader could open and search the index at
every moment, the re-run completes, and the result equals an uninterrupted update of the
same files: same items and ids, vectors within float16 rounding, nothing left behind.
The update writes a new segment and a deletion record that replaces one the index had (its
A was built with one more image, then without it); the conversion cases start from A as a
format-1 index, which the update converts first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from indexer import BuildPlan, build_index
from retrieval.store.store import open_store
from tests.imagegen import draw, write_images
from tests.legacy_index import downgrade
from tests.stored import read_back

BUILD = """
import sys
from indexer import BuildPlan, build_index
build_index(BuildPlan([sys.argv[1]], sys.argv[2], "test-tiny", device="cpu", batch_size=4, workers=int(sys.argv[3]),
            checkpoint_every=8, progress=False))
"""
KILL_POINTS = [
    ("scan:7", 0),  # scanning the folder
    ("embedded:1", 0),  # first batch embedded, nothing staged yet
    ("written:model:1", 0),  # staging's model.json written beside, not yet renamed
    ("written:chunk:1", 0),  # first staged chunk written beside, not yet renamed
    ("staged:2", 2),  # two chunks staged, embedding goes on (decode workers running)
    ("commit:1", 0),  # everything embedded and staged, commit starting
    ("written:000002:1", 0),  # the new segment's vectors written, not renamed
    ("written:000002:3", 0),  # its FAISS file written, not renamed
    ("segment:1", 0),  # the new segment's files all written, not committed
    ("written:000001:1", 0),  # segment 1's new deletion record written, not renamed
    ("deletion:1", 0),  # the deletion record written, not committed
    ("cleanup:1", 0),  # committed, the deletion record it replaced being deleted
    ("committed:1", 0),  # committed, staging not yet cleared
]
CONVERSION_KILL_POINTS = [
    ("written:000001:1", 0),  # converting: segment 1's ids written, not renamed
    ("convert:1", 0),  # the format-2 catalog and segment written, the manifest still format 1
    ("written:manifest:1", 0),  # the format-2 manifest written, not renamed
    ("cleanup:1", 0),  # converted, the format-1 files half deleted
    ("segment:1", 0),  # converted, the update's new segment written, not committed
]
EXTRA = "zz_extra.png"
"""In A's first build only: its deletion gives segment 1 a deletion record for B's to replace."""


def _collection_a(folder: Path) -> None:
    write_images(folder, 24)


def _change_to_b(folder: Path) -> None:
    """Two files removed, twenty added, one rewritten with other content."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for gone in files[:2]:
        gone.unlink()
    for number in range(100, 120):
        draw(number).save(folder / f"new_{number}.png")
    changed = files[5]
    draw(77).save(changed)
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))


def _state(index_dir: Path, folder: Path) -> dict[str, tuple[int, str, np.ndarray]]:
    index = read_back(index_dir)
    paths = [item.path for item in index.items]
    assert len(paths) == len(set(paths)), "an image is in the catalog twice"
    return {
        str(Path(item.path).relative_to(folder)): (item.id, item.sha256, np.asarray(vector, np.float32))
        for item, vector in zip(index.items, index.embeddings)
    }


def _index_of_a(folder: Path, out: Path, model) -> None:
    """A, indexed as a segment with a deletion record: built with EXTRA, then without it."""
    _collection_a(folder)
    draw(500).save(folder / EXTRA)
    build_index(BuildPlan([folder], out, model=model, progress=False))
    (folder / EXTRA).unlink()
    build_index(BuildPlan([folder], out, model=model, progress=False))


def _uninterrupted(root: Path, model, start) -> dict:
    start(root / "photos", root / "index", model)
    _change_to_b(root / "photos")
    build_index(BuildPlan([root / "photos"], root / "index", model=model, progress=False))
    return _state(root / "index", root / "photos")


def _legacy_a(folder: Path, out: Path, model) -> None:
    """A as a format-1 index (what an older tusou wrote)."""
    _collection_a(folder)
    build_index(BuildPlan([folder], out.with_name("format-2"), model=model, progress=False))
    downgrade(out.with_name("format-2"), out)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model) -> dict:
    """An uninterrupted update from A to B."""
    return _uninterrupted(tmp_path_factory.mktemp("reference"), tiny_model, _index_of_a)


@pytest.fixture(scope="module")
def converted_reference(tmp_path_factory, tiny_model) -> dict:
    """An uninterrupted update from A, a format-1 index, to B."""
    return _uninterrupted(tmp_path_factory.mktemp("converted-reference"), tiny_model, _legacy_a)


def _search_while_building(build: subprocess.Popen, out: Path) -> int:
    """Open and search the index all through the build: a stored image finds itself first, always."""
    opened = 0
    while build.poll() is None:
        store = open_store(out)
        try:
            view = store.view()
            item, segment, row = next(store.catalog.all_items())
            position = view.bases[[s.id for s in view.segments].index(segment)] + row
            _, found = view.search(np.asarray(view.vectors([position]), np.float32), 3)
            assert view.ids(found[0][:1]).tolist() == [item.id]
        finally:
            store.close()
        opened += 1
        time.sleep(0.01)  # leave the build the CPU
    return opened


def _killed_update_resumes(tmp_path: Path, model, expected: dict, start, point: str, workers: int) -> None:
    folder, out = tmp_path / "photos", tmp_path / "index"
    start(folder, out, model)
    before = _state(out, folder)
    _change_to_b(folder)

    env = dict(os.environ, TUSOU_KILL_AT=point)
    build = subprocess.Popen([sys.executable, "-c", BUILD, str(folder), str(out), str(workers)], env=env)
    opened = _search_while_building(build, out)
    assert build.returncode == -signal.SIGKILL, f"the build was not killed at {point}"
    after_kill = _state(out, folder)  # still a complete index: the old state or the new one
    assert after_kill.keys() in (before.keys(), expected.keys())
    assert opened > 0

    summary = build_index(BuildPlan([folder], out, model=model, progress=False))
    final = _state(out, folder)
    assert final.keys() == expected.keys() and summary.total == len(expected)
    for name, (item_id, sha256, vector) in expected.items():
        assert final[name][:2] == (item_id, sha256), name
        np.testing.assert_allclose(final[name][2], vector, atol=2e-3)
    named = {name for row in read_back(out).segments for name in row.files.values()}
    assert {p.name for p in out.iterdir()} == {"manifest.json", "catalog.sqlite", "segments", ".lock"}, "leftovers"
    assert {f"segments/{p.name}" for p in (out / "segments").iterdir()} == named, "leftovers"


@pytest.mark.parametrize("point, workers", KILL_POINTS, ids=[p for p, _ in KILL_POINTS])
def test_killed_update_resumes_to_the_uninterrupted_result(tmp_path, tiny_model, reference, point, workers):
    _killed_update_resumes(tmp_path, tiny_model, reference, _index_of_a, point, workers)


@pytest.mark.parametrize("point, workers", CONVERSION_KILL_POINTS, ids=[p for p, _ in CONVERSION_KILL_POINTS])
def test_killed_conversion_resumes_to_the_uninterrupted_result(tmp_path, tiny_model, converted_reference, point, workers):
    _killed_update_resumes(tmp_path, tiny_model, converted_reference, _legacy_a, point, workers)
