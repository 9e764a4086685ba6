"""A full disk at any point of a build, an update, a merge, a conversion or a reindex: one line that
names the index directory and about how much space is needed, nothing partial left behind, the old
state searchable, and the re-run once space is freed ends equal to a build that had room.

The index lives on a small tmpfs the test mounts (so only as root; skipped otherwise), filled with a
ballast file so that each attempt starts with exactly so many bytes free. Each test sweeps: from the
same starting state each time, it runs the write with 0, 1, 2, ... pages free until it succeeds, so
the write runs out of space at every page it writes, in each of its steps; at the first failure in
each step it frees room and runs the write again, which must resume from what the failed one kept.
The images and the reference indexes are on the ordinary disk.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

from indexer import BuildPlan, build_index
from indexer.build import BuildSummary
from indexer.reindex import Reindexed, reindex
from retrieval import Searcher
from retrieval.errors import TusouError
from retrieval.store.atomic import TEMPORARY_FILE
from retrieval.store.full_disk import DiskFull
from retrieval.store.manifest import read_manifest
from tests.imagegen import draw, write_images
from tests.legacy_index import downgrade
from tests.stored import read_back

PAGE = 4096
DISK = 4 * 1024 * 1024
ROOM = 1024 * 1024
"""Free space for the checks between attempts (opening SQLite needs some)."""
TUSOU = str(Path(sys.executable).with_name("tusou"))
FULL = re.compile(r"no space left on the disk holding (.+): about [\d.]+ (KB|MB|GB) free needed there; free some space and (.+)")
PHASES = [
    ("merge_segments", "merge"), ("convert", "conversion"), ("Staging.flush", "staging"), ("Staging._create", "staging"),
    ("write_segment", "segment"), ("write_deletions", "deletion"), ("write_manifest", "manifest"),
    ("transaction", "catalog"), ("Catalog.checked", "catalog"),
]
"""Where a write ran out, by the functions its error passed through (the first found wins)."""
T = TypeVar("T")


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting the small file system these tests fill needs root")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK // 1024}k", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        gc.collect()  # connections still held by a failure's traceback
        if subprocess.run(["umount", str(mount)]).returncode:
            subprocess.run(["umount", "--lazy", str(mount)], check=True)


def leave_free(disk: Path, nbytes: int) -> None:
    """Grow or shrink the ballast so that exactly `nbytes` are free on `disk`."""
    ballast = disk / "ballast"
    ballast.touch()
    size = ballast.stat().st_size
    target = size + shutil.disk_usage(disk).free - nbytes
    if target < size:
        os.truncate(ballast, target)
    elif target > size:
        with open(ballast, "r+b") as handle:
            os.posix_fallocate(handle.fileno(), 0, target)
    assert shutil.disk_usage(disk).free == nbytes


def phase_of(error: TusouError) -> str:
    cause = error.__cause__
    names = {frame.f_code.co_qualname for frame, _ in traceback.walk_tb(cause.__traceback__)}
    return next((phase for name, phase in PHASES if name in names), f"elsewhere: {cause!r}")


def sweep(disk: Path, start: Callable[[], None], attempt: Callable[[], T], failed: Callable[[TusouError], None],
          resumed: Callable[[str, T], None], limit: int = DISK // 2) -> list[str]:
    """From the same `start` each time, run `attempt` with 0, 1, 2, ... pages free until it succeeds, so it
    runs out at every page it writes; `failed` checks each failure. At the first failure in each phase,
    the re-run with room resumes from it and `resumed(phase, result)` checks it. Returns each failure's phase."""
    phases: list[str] = []
    for free in range(0, limit, PAGE):
        gc.collect()  # the last attempt's traceback still holds its frames, and they its mapped segment files:
        # unlinked, those keep their space until released, and would hand it back in the middle of this attempt
        leave_free(disk, ROOM)
        start()
        leave_free(disk, free)
        try:
            attempt()
            return phases
        except TusouError as error:
            phases.append(phase_of(error))
            failed(error)
        if phases[-1] not in phases[:-1]:
            leave_free(disk, ROOM)
            resumed(phases[-1], attempt())
    pytest.fail(f"still out of space with {limit:,} bytes free")


def assert_one_line(error: TusouError, out: Path, rerun: str) -> None:
    found = FULL.fullmatch(str(error))
    assert found and found[1] == str(out) and found[3] == rerun, str(error)


def assert_nothing_partial(out: Path) -> None:
    """Nothing but what the committed state names, and staging a re-run can resume from."""
    if not out.exists():
        return
    assert not [p for p in out.rglob("*") if TEMPORARY_FILE.fullmatch(p.name)], "temporary files left"
    names = {p.name for p in out.iterdir()} - {".lock", "staging"}
    if (out / "manifest.json").is_file() and read_manifest(out).segmented:
        assert names <= {"manifest.json", "catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm", "segments"}, names
        named = {name for row in read_back(out).segments for name in row.files.values()}
        assert {f"segments/{p.name}" for p in (out / "segments").iterdir()} == named
    elif (out / "manifest.json").is_file():
        assert names == {"manifest.json", *read_manifest(out).files.values()}, names
    else:
        assert not names, f"a first build left {names} before its manifest"
    assert_staging_resumable(out / "staging")


def assert_staging_resumable(staging: Path) -> None:
    """Every chunk whole and named by a committed record; besides them only the model and the records."""
    if not staging.exists():
        return
    names = {p.name for p in staging.iterdir()}
    chunks = {name for name in names if re.fullmatch(r"chunk-\d+\.npz", name)}
    assert names - chunks <= {"model.json", "records.sqlite", "records.sqlite-wal", "records.sqlite-shm"}, names
    if not chunks:
        return
    db = sqlite3.connect(staging / "records.sqlite")
    try:
        named = dict(db.execute("SELECT chunk, max(row) FROM records GROUP BY chunk").fetchall())
    finally:
        db.close()
    assert {f"chunk-{number:06d}.npz" for number in named} == chunks, "a chunk that no record names"
    for number, last_row in named.items():
        with np.load(staging / f"chunk-{number:06d}.npz") as chunk:
            assert len(chunk["vectors"]) > last_row


def state(out: Path) -> dict[str, tuple[int, str, np.ndarray]]:
    index = read_back(out)
    return {item.path: (item.id, item.sha256, np.asarray(vector, np.float32)) for item, vector in zip(index.items, index.embeddings)}


def assert_same_index(out: Path, reference: Path) -> None:
    got, expected = state(out), state(reference)
    assert got.keys() == expected.keys()
    for path, (item_id, sha256, vector) in expected.items():
        assert got[path][:2] == (item_id, sha256), path
        np.testing.assert_allclose(got[path][2], vector, atol=2e-3)
    assert sorted(r.index_entry.type for r in read_back(out).segments) == sorted(r.index_entry.type for r in read_back(reference).segments)
    assert sorted(r.live for r in read_back(out).segments) == sorted(r.live for r in read_back(reference).segments)


def stored_queries(directory: Path) -> np.ndarray:
    """The stored vectors of the first, the middle and the last image (in path order, where a build's new
    images come last): each finds its own image first, so the answers tell states apart."""
    vectors = read_back(directory).embeddings
    return np.asarray(vectors[[0, len(vectors) // 2, len(vectors) - 1]], np.float32)


def ask(where: Path | Searcher, model, queries: np.ndarray) -> list[list[int]]:
    """The ids a Searcher answers `queries` with: `where` itself, or a new Searcher of that directory,
    closed after (a file it holds open keeps its space)."""
    searcher = where if isinstance(where, Searcher) else Searcher(where, model=model, precision="fp32")
    try:
        return [[hit.id for hit in hits] for hits in searcher.search_vectors(queries, k=5)]
    finally:
        if searcher is not where:
            searcher.store.close()


def plan(folder: Path, out: Path, model) -> BuildPlan:
    return BuildPlan([folder], out, model=model, precision="fp32", workers=0, batch_size=4, checkpoint_every=4, progress=False)


BUILD_AGAIN = "run the build again: it resumes from what it staged"


def test_a_first_build_out_of_space_anywhere_stops_clean_and_resumes(small_disk, tmp_path, tiny_model):
    folder, out, reference = tmp_path / "photos", small_disk / "index", tmp_path / "reference"
    write_images(folder, 8)
    build_index(plan(folder, reference, tiny_model))
    queries = stored_queries(reference)
    expected = ask(reference, tiny_model, queries)

    def failed(error: TusouError) -> None:
        assert_one_line(error, out, BUILD_AGAIN)
        leave_free(small_disk, ROOM)
        assert_nothing_partial(out)

    def resumed(phase: str, summary: BuildSummary) -> None:
        assert summary.embedded + summary.resumed == 8
        if phase != "staging":  # everything was staged before it ran out
            assert summary.embedded == 0
        assert_same_index(out, reference)
        assert ask(out, tiny_model, queries) == expected

    phases = sweep(small_disk, lambda: shutil.rmtree(out, ignore_errors=True), lambda: build_index(plan(folder, out, tiny_model)), failed, resumed)
    assert {"staging", "segment", "catalog", "manifest"} <= set(phases), phases


def _index_of_a(folder: Path, out: Path, model) -> None:
    """16 images in segment 1, then ten updates adding five each: ten small segments, one short of a merge."""
    write_images(folder, 16)
    build_index(plan(folder, out, model))
    for update in range(10):
        for number in range(5):
            draw(200 + 5 * update + number).save(folder / f"added_{update}_{number}.png")
        build_index(plan(folder, out, model))


def _change_to_b(folder: Path) -> None:
    """One image removed, one rewritten, two added: a segment of three, the eleventh of its tier, whose
    merge (53 rows) writes more than the update's staging, cleared before it, held."""
    files = sorted(p for p in folder.rglob("image_*") if p.is_file())
    files[0].unlink()
    draw(77).save(files[3])
    os.utime(files[3], ns=(files[3].stat().st_atime_ns, files[3].stat().st_mtime_ns + 10**9))
    for number in (300, 301):
        draw(number).save(folder / f"new_{number}.png")


def test_an_update_out_of_space_keeps_the_old_index_searchable_and_resumes(small_disk, tmp_path, tiny_model):
    folder, out, reference = tmp_path / "photos", small_disk / "index", tmp_path / "reference"
    _index_of_a(folder, tmp_path / "a", tiny_model)
    shutil.copytree(tmp_path / "a", reference)
    _change_to_b(folder)
    build_index(plan(folder, reference, tiny_model))
    queries = stored_queries(reference)
    before, after = ask(tmp_path / "a", tiny_model, queries), ask(reference, tiny_model, queries)
    assert after != before
    searchers: list[Searcher] = []

    def start() -> None:
        for searcher in searchers:
            searcher.store.close()
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(tmp_path / "a", out)
        searchers[:] = [Searcher(out, model=tiny_model, precision="fp32")]

    def failed(error: TusouError) -> None:
        assert_one_line(error, out, BUILD_AGAIN)
        assert ask(searchers[0], tiny_model, queries) in (before, after)  # the disk still full: the old state, or the new one once committed
        assert ask(out, tiny_model, queries) in (before, after)
        leave_free(small_disk, ROOM)
        assert_nothing_partial(out)

    def resumed(phase: str, summary: BuildSummary) -> None:
        assert summary.embedded + summary.resumed == (3 if phase in ("staging", "segment", "deletion", "catalog") else 0)
        if phase != "staging":
            assert summary.embedded == 0
        assert_same_index(out, reference)
        assert ask(searchers[0], tiny_model, queries) == ask(out, tiny_model, queries) == after

    phases = sweep(small_disk, start, lambda: build_index(plan(folder, out, tiny_model)), failed, resumed)
    assert {"staging", "segment", "deletion", "catalog", "merge"} <= set(phases), phases


def test_a_new_index_type_out_of_space_in_its_merge_still_gets_it_when_run_again(small_disk, tmp_path, tiny_model):
    """`tusou index --index-type hnsw` on a flat index: the build's commit, then the merge of everything
    into one hnsw segment, a transaction of its own. Run out between the two, the re-run still merges."""
    folder, out, reference, built = tmp_path / "photos", small_disk / "index", tmp_path / "reference", tmp_path / "built"
    write_images(folder, 100)  # the merge rewrites them all: it needs clearly more room than the commit of one
    build_index(plan(folder, built, tiny_model))
    shutil.copytree(built, reference)
    draw(500).save(folder / "one_more.png")
    hnsw = lambda directory: replace(plan(folder, directory, tiny_model), index_type="hnsw")  # noqa: E731
    build_index(hnsw(reference))
    assert [row.index_entry.type for row in read_back(reference).segments] == ["hnsw"]

    def start() -> None:
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(built, out)

    def failed(error: TusouError) -> None:
        assert_one_line(error, out, BUILD_AGAIN)
        leave_free(small_disk, ROOM)
        assert_nothing_partial(out)

    def resumed(phase: str, summary: BuildSummary) -> None:
        assert_same_index(out, reference)

    phases = sweep(small_disk, start, lambda: build_index(hnsw(out)), failed, resumed)
    assert {"staging", "catalog", "merge"} <= set(phases), phases


@pytest.mark.parametrize("version, phase", [(1, "conversion"), (2, "merge")])
def test_a_reindex_out_of_space_keeps_the_index_searchable_and_resumes(small_disk, tmp_path, tiny_model, version, phase):
    """Of a format-1 index, which it converts first (its merge then fits in what the conversion freed),
    and of one of several segments and a deletion record, all merged into one."""
    folder, out, reference, built = tmp_path / "photos", small_disk / "index", tmp_path / "reference", tmp_path / "built"
    write_images(folder, 16)
    build_index(plan(folder, built, tiny_model))
    if version == 1:
        downgrade(built, tmp_path / "format-1")
        built = tmp_path / "format-1"
    else:
        for number in range(3):
            draw(400 + number).save(folder / f"later_{number}.png")
            (folder / f"image_{number:04d}.png").unlink(missing_ok=True)
            build_index(plan(folder, built, tiny_model))
    shutil.copytree(built, reference)
    queries = stored_queries(reference)
    before = ask(reference, tiny_model, queries)
    reindex(reference, "hnsw", progress=False)
    after = ask(reference, tiny_model, queries)
    searchers: list[Searcher] = []

    def start() -> None:
        for searcher in searchers:
            searcher.store.close()
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(built, out)
        searchers[:] = [Searcher(out, model=tiny_model, precision="fp32")]

    def failed(error: TusouError) -> None:
        assert_one_line(error, out, "run the reindex again")
        assert ask(searchers[0], tiny_model, queries) in (before, after)
        leave_free(small_disk, ROOM)
        assert ask(out, tiny_model, queries) in (before, after)
        assert_nothing_partial(out)

    def resumed(phase: str, done: Reindexed) -> None:
        assert done.entry.type == "hnsw" and done.converted == (phase == "conversion")
        assert_same_index(out, reference)
        assert ask(out, tiny_model, queries) == after

    phases = sweep(small_disk, start, lambda: reindex(out, "hnsw", progress=False), failed, resumed)
    assert phase in phases, phases


def test_a_reader_on_a_full_disk_is_told_so_not_that_the_index_is_damaged(small_disk, tmp_path, tiny_model):
    write_images(tmp_path / "photos", 4)
    build_index(plan(tmp_path / "photos", small_disk / "index", tiny_model))
    leave_free(small_disk, 0)  # SQLite cannot make the catalog's WAL index (-shm) a reader needs
    with pytest.raises(DiskFull, match="no space left on the disk holding .*: free some space and try again"):
        Searcher(small_disk / "index", model=tiny_model)
    leave_free(small_disk, ROOM)
    assert {p.name for p in (small_disk / "index").iterdir()} == {"manifest.json", "catalog.sqlite", "segments", ".lock"}
    assert len(Searcher(small_disk / "index", model=tiny_model)) == 4


def _tusou(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([TUSOU, *argv], capture_output=True, text=True, timeout=300)


def _error_lines(stderr: str) -> list[str]:
    """stderr without progress bars."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.strip() and not re.search(r"\[\d\d:\d\d", line)]


def test_the_cli_prints_one_line_and_exits_2_then_resumes(small_disk, tmp_path, tiny_model):
    folder, out, reference = tmp_path / "photos", small_disk / "index", tmp_path / "reference"
    write_images(folder, 20)
    build_index(plan(folder, reference, tiny_model))
    index = ["index", str(folder), "--out", str(out), "--model", "test-tiny", "--device", "cpu", "--precision", "fp32", "--workers", "0", "--checkpoint-every", "4"]

    leave_free(small_disk, 40 * PAGE)  # room for some of the staging, not for the segment and catalog
    failed = _tusou(*index)
    lines = _error_lines(failed.stderr)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr and len(lines) == 1, failed.stderr
    assert lines[0].startswith(f"tusou: error: no space left on the disk holding {out}: about ")
    assert_one_line(TusouError(lines[0].removeprefix("tusou: error: ")), out, "run the build again: it resumes from what it staged")
    assert_nothing_partial(out)

    leave_free(small_disk, 2 * ROOM)
    done = _tusou(*index)
    assert done.returncode == 0 and "more staged by an interrupted run" in done.stdout, done.stderr
    assert_same_index(out, reference)

    leave_free(small_disk, 8 * PAGE)
    failed = _tusou("reindex", str(out), "--index-type", "hnsw", "--json")
    lines = _error_lines(failed.stderr)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr and len(lines) == 1, failed.stderr
    assert_one_line(TusouError(lines[0].removeprefix("tusou: error: ")), out, "run the reindex again")
    leave_free(small_disk, ROOM)
    assert_nothing_partial(out)
    assert_same_index(out, reference)
