"""SIGKILL an index update at exact steps of every stage; the next run must finish the job.

Each case starts from an index of collection A, changes the folder to B (two files gone,
twenty new, one rewritten), runs `build_index` in a subprocess that kills itself at one
kill point (retrieval/faults.py), and checks: a reader could open and search the index at
every moment, the re-run completes, and the result equals an uninterrupted update of the
same files: same items and ids, vectors within float16 rounding, nothing left behind.
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
from retrieval.store.index_store import open_index
from tests.imagegen import draw, write_images

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
    ("written:catalog:1", 0),  # new generation's catalog written, not renamed
    ("written:embeddings:1", 0),
    ("written:index:1", 0),  # FAISS file written, not renamed
    ("written:manifest:1", 0),  # new manifest written, not yet swapped in
    ("cleanup:1", 0),  # new generation live, old one half deleted
    ("committed:1", 0),  # committed, staging not yet cleared
]


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
    stored = open_index(index_dir)
    paths = [item.path for item in stored.items]
    assert len(paths) == len(set(paths)), "an image is in the catalog twice"
    return {
        str(Path(item.path).relative_to(folder)): (item.id, item.sha256, np.asarray(stored.embeddings[row], np.float32))
        for row, item in enumerate(stored.items)
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model) -> dict:
    """An uninterrupted build of A, then of B."""
    root = tmp_path_factory.mktemp("reference")
    _collection_a(root / "photos")
    build_index(BuildPlan([root / "photos"], root / "index", model=tiny_model, progress=False))
    _change_to_b(root / "photos")
    build_index(BuildPlan([root / "photos"], root / "index", model=tiny_model, progress=False))
    return _state(root / "index", root / "photos")


@pytest.mark.parametrize("point, workers", KILL_POINTS, ids=[p for p, _ in KILL_POINTS])
def test_killed_update_resumes_to_the_uninterrupted_result(tmp_path, tiny_model, reference, point, workers):
    folder, out = tmp_path / "photos", tmp_path / "index"
    _collection_a(folder)
    build_index(BuildPlan([folder], out, model=tiny_model, progress=False))
    before = _state(out, folder)
    _change_to_b(folder)

    env = dict(os.environ, TUSOU_KILL_AT=point)
    build = subprocess.Popen([sys.executable, "-c", BUILD, str(folder), str(out), str(workers)], env=env)
    opened = 0
    while build.poll() is None:  # a reader opens and searches the index all through the build
        stored = open_index(out)
        assert stored.search(np.asarray(stored.embeddings[:1], np.float32), 3)[1][0][0] == 0
        opened += 1
        time.sleep(0.01)  # leave the build the CPU
    assert build.returncode == -signal.SIGKILL, f"the build was not killed at {point}"
    after_kill = _state(out, folder)  # still a complete index: the old generation or the new one
    assert after_kill.keys() in (before.keys(), reference.keys())
    assert opened > 0

    summary = build_index(BuildPlan([folder], out, model=tiny_model, progress=False))
    final = _state(out, folder)
    assert final.keys() == reference.keys() and summary.total == len(reference)
    for name, (item_id, sha256, vector) in reference.items():
        assert final[name][:2] == (item_id, sha256), name
        np.testing.assert_allclose(final[name][2], vector, atol=2e-3)
    manifest_files = set(open_index(out).manifest.files.values())
    assert {p.name for p in out.iterdir()} == manifest_files | {"manifest.json", ".lock"}, "leftovers"
