"""The build's side of the segment store: an update in place answers like a clean build, writes
bytes in proportion to what changed, a format-1 index converts without re-embedding, leftovers of
killed writers are swept (and nothing else), `tusou info` answers from the catalog's counts.

Searches go through the store's own reader (open_store(dir).view()), items through its catalog.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench.vectors import ClipLikeSpace
from indexer import BuildPlan, build_index
from indexer.commit import Change, commit_change, create_index
from indexer.convert import convert
from indexer.leftovers import remove_leftovers
from indexer.plan import Layout
from retrieval.errors import TusouError
from retrieval.store.catalog import Catalog
from retrieval.store.index_info import summary
from retrieval.store.model_ref import ModelRef
from retrieval.store.records import CatalogItem
from retrieval.store.store import CATALOG, open_store
from tests.imagegen import draw, write_images
from tests.legacy_index import downgrade, write_legacy_index
from tests.stored import read_back
from tests.test_metadata_filters import jpeg_with_exif
from ui.cli import main

MODEL = ModelRef("test-tiny", "f")
DIM = 64


def _top(directory: Path, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
    """(path, score) of the top k per query, through the store's reader."""
    store = open_store(directory)
    try:
        view = store.view()
        scores, positions = view.search(queries, k)
        found = []
        for row_scores, row in zip(scores, positions):
            ids = view.ids(row[row >= 0]).tolist()
            items = store.catalog.items(ids)
            found.append([(items[i]["path"], float(s)) for i, s in zip(ids, row_scores)])
        return found
    finally:
        store.close()


def test_an_update_in_place_answers_like_a_clean_build(tmp_path, fresh_folder, tiny_model):
    out = tmp_path / "index"
    build_index(BuildPlan([fresh_folder], out, model=tiny_model, workers=0, progress=False))
    before = read_back(out)
    changed, removed = fresh_folder / "image_0003.bmp", fresh_folder / "image_0006.jpg"
    old_vector = before.embeddings[[i.path for i in before.items].index(str(changed))]
    draw(777).save(changed)
    removed.unlink()
    write_images(fresh_folder, 2, start=300)
    build_index(BuildPlan([fresh_folder], out, model=tiny_model, workers=0, progress=False))
    build_index(BuildPlan([fresh_folder], tmp_path / "clean", model=tiny_model, workers=0, progress=False))

    updated, clean = read_back(out), read_back(tmp_path / "clean")
    assert [(i.path, i.sha256, i.width, i.height) for i in updated.items] == [(i.path, i.sha256, i.width, i.height) for i in clean.items]
    np.testing.assert_allclose(updated.embeddings.astype(np.float32), clean.embeddings.astype(np.float32), atol=2e-3)
    ids = {i.path: i.id for i in updated.items}
    assert ids[str(changed)] == {i.path: i.id for i in before.items}[str(changed)], "a changed image keeps its id"
    assert sorted(ids[p] for p in ids if p not in {i.path for i in before.items}) == [24, 25], "new ids follow the old ones"
    assert [(row.count, row.deleted) for row in updated.segments] == [(24, 2), (3, 0)]

    queries = np.concatenate([np.asarray(updated.embeddings[:6], np.float32), np.asarray(old_vector[None], np.float32)])
    ours, theirs = _top(out, queries, 8), _top(tmp_path / "clean", queries, 8)
    assert [[p for p, _ in row] for row in ours] == [[p for p, _ in row] for row in theirs]
    np.testing.assert_allclose([[s for _, s in row] for row in ours], [[s for _, s in row] for row in theirs], atol=1e-5)
    assert all(len({p for p, _ in row}) == 8 and str(removed) not in {p for p, _ in row} for row in ours), "deleted rows never come back"


def _index(directory: Path, count: int, space: ClipLikeSpace) -> Catalog:
    """A flat index of `count` synthetic items, no model needed; returns its catalog, open."""
    vectors = space.array(count).astype(np.float16)
    items = [CatalogItem(f"/photos/{i:07d}.jpg", 1000 + i, i, f"{i:064x}", 640, 480, id=i) for i in range(count)]
    directory.mkdir()
    create_index(directory, MODEL, DIM, Change(items, lambda out: np.copyto(out, vectors), count, Layout("flat", None)), progress=False)
    return Catalog(directory / CATALOG)


def _written(action) -> int:
    """Bytes this process handed to write() while `action` ran (/proc/self/io wchar)."""
    def wchar() -> int:
        return int(dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())["wchar"])

    start = wchar()
    action()
    return wchar() - start


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="counting bytes written needs Linux's /proc/self/io")
def test_an_update_writes_bytes_in_proportion_to_the_change_not_the_collection(tmp_path):
    space = ClipLikeSpace(dim=DIM, clusters=32, seed=4)
    catalog = _index(tmp_path / "index", 20_000, space)
    size = sum(p.stat().st_size for p in (tmp_path / "index").rglob("*") if p.is_file())

    def add(k: int, first_id: int, generation: int) -> int:
        """Bytes written by a commit adding k images and removing item `generation` (row `generation` of segment 1)."""
        items = [CatalogItem(f"/photos/new/{first_id + i:07d}.jpg", 1, 1, "0" * 64, 640, 480, id=first_id + i) for i in range(k)]
        vectors = space.array(k, stream=generation).astype(np.float16)
        change = Change(items, lambda out: np.copyto(out, vectors), first_id + k, Layout("flat", None), replaced={1: [generation]})
        return _written(lambda: commit_change(tmp_path / "index", catalog, DIM, change, progress=False))

    written = {1: add(1, 20_000, 2), 1000: add(1000, 20_001, 3)}
    catalog.close()
    assert written[1] < size / 50, (written, size)  # a full rewrite would write `size` bytes
    assert written[1000] - written[1] <= 999 * 8 * 1024, written  # the bound: ≤ 8 KB more per added image
    assert [(row.count, row.deleted) for row in read_back(tmp_path / "index").segments] == [(20_000, 2), (1, 0), (1000, 0)]


def _with_exif_photo(folder: Path) -> Path:
    photo = folder / "camera" / "exif.jpg"
    photo.parent.mkdir(parents=True)
    photo.write_bytes(jpeg_with_exif(taken="2023:08:15 09:10:11", offset="+08:00", orientation=None))
    return photo


def test_a_format_1_index_converts_on_the_next_build_without_re_embedding(tmp_path, fresh_folder, tiny_model, capsys):
    photo = _with_exif_photo(fresh_folder)
    build_index(BuildPlan([fresh_folder], tmp_path / "built", model=tiny_model, workers=0, progress=False))
    out = tmp_path / "index"
    downgrade(tmp_path / "built", out)
    legacy = read_back(out)
    embeddings = (out / "embeddings.1.npy").read_bytes()

    assert main(["index", str(fresh_folder), "--out", str(out), "--model", "test-tiny", "--workers", "0", "--json"]) == 0
    printed = capsys.readouterr()
    result = json.loads(printed.out)
    assert [line for line in printed.err.splitlines() if "converted" in line] == [
        f"tusou: converted {out} to index format 2 (segments and a SQLite catalog), 25 images, nothing re-embedded"]
    assert (result["embedded"], result["unchanged"], result["total"]) == (0, 25, 25), "nothing re-embedded"
    assert sorted(os.listdir(out)) == [".lock", "catalog.sqlite", "manifest.json", "segments"]
    assert json.loads((out / "manifest.json").read_text())["format_version"] == 2
    assert (out / "segments" / "000001.vectors.npy").read_bytes() == embeddings
    index = read_back(out)
    assert [(i.path, i.id, i.sha256) for i in index.items] == [(i.path, i.id, i.sha256) for i in legacy.items]
    np.testing.assert_array_equal(index.embeddings, legacy.embeddings)
    assert index.layout == {"requested": "auto", "max_memory": None} and index.generation == 1
    by_path = {i.path: i for i in index.items}
    assert (by_path[str(photo)].taken, by_path[str(photo)].taken_offset, by_path[str(photo)].camera) == ("2023-08-15T09:10:11", "+08:00", "Canon EOS R5")
    assert by_path[str(fresh_folder / "image_0001.png")].format == "png", "metadata read from each image's header"
    assert not convert(out, progress=False), "a format-2 index is left as it is"
    assert main(["index", str(fresh_folder), "--out", str(out), "--model", "test-tiny", "--workers", "0"]) == 0
    assert "converted" not in capsys.readouterr().err


def test_leftovers_of_killed_writers_are_swept_and_nothing_else(tmp_path):
    space = ClipLikeSpace(dim=DIM, clusters=8, seed=1)
    ours = tmp_path / "index"
    _index(ours, 50, space).close()
    named = sorted(p.name for p in (ours / "segments").iterdir())
    for stray in ("segments/000002.vectors.npy", "segments/000001.deleted.000002.npy", "segments/.000002.faiss.tmp-99", ".manifest.json.tmp-7",
                  "embeddings.1.npy", "staging/.chunk-000001.npz.tmp-3"):
        (ours / stray).parent.mkdir(exist_ok=True)
        (ours / stray).write_bytes(b"left by a killed writer")
    (ours / "segments" / "notes.txt").write_text("not ours to delete")
    assert sorted(remove_leftovers(ours)) == sorted([".manifest.json.tmp-7", "embeddings.1.npy", "staging/.chunk-000001.npz.tmp-3",
                                                     "segments/.000002.faiss.tmp-99", "segments/000001.deleted.000002.npy", "segments/000002.vectors.npy"])
    assert sorted(p.name for p in (ours / "segments").iterdir()) == sorted([*named, "notes.txt"])
    assert read_back(ours).items and remove_leftovers(ours) == []

    half = tmp_path / "half-converted"  # killed between catalog.sqlite and the format-2 manifest
    items = [CatalogItem(f"/p/{i}.jpg", 1, 1, "0", 1, 1, id=i) for i in range(5)]
    write_legacy_index(half, MODEL, items, space.array(5))
    legacy = sorted(os.listdir(half))
    shutil.copy(ours / CATALOG, half / CATALOG)
    (half / "catalog.sqlite-wal").write_bytes(b"")
    (half / "segments").mkdir()
    os.link(half / "embeddings.1.npy", half / "segments" / "000001.vectors.npy")
    assert sorted(remove_leftovers(half)) == ["catalog.sqlite", "catalog.sqlite-wal", "segments/000001.vectors.npy"]
    assert sorted(os.listdir(half)) == legacy and len(read_back(half).items) == 5

    created = tmp_path / "created"  # a first build killed before its manifest
    shutil.copytree(ours, created)
    (created / "manifest.json").unlink()
    (created / "segments" / "notes.txt").unlink()
    assert sorted(remove_leftovers(created)) == ["catalog.sqlite", *(f"segments/{name}" for name in named)]
    assert os.listdir(created) == ["staging"]


def test_a_first_build_killed_before_its_manifest_is_no_index_yet_and_the_next_build_starts_over(tmp_path, fresh_folder, tiny_model):
    out = tmp_path / "index"
    build_index(BuildPlan([fresh_folder], out, model=tiny_model, workers=0, progress=False))
    (out / "manifest.json").unlink()  # what a kill between the catalog and the manifest leaves
    with pytest.raises(TusouError, match="is not a tusou index"):
        open_store(out)
    summary_ = build_index(BuildPlan([fresh_folder], out, model=tiny_model, workers=0, progress=False))
    assert summary_.added == 24 and [row.count for row in read_back(out).segments] == [24]


def test_info_answers_from_the_manifest_and_the_catalog_counts(tmp_path, capsys):
    space = ClipLikeSpace(dim=DIM, clusters=8, seed=2)
    catalog = _index(tmp_path / "index", 300, space)
    new = [CatalogItem("/photos/new.jpg", 1, 1, "0", 1, 1, id=300)]
    vector = space.array(1, stream=5).astype(np.float16)
    change = Change(new, lambda out: np.copyto(out, vector), 301, Layout("flat", None), replaced={1: [7, 8]})
    commit_change(tmp_path / "index", catalog, DIM, change, progress=False)
    catalog.close()

    info = summary(tmp_path / "index")
    assert (info["count"], info["dim"], info["generation"], info["format_version"]) == (299, 64, 2, 2)
    assert [(s["id"], s["type"], s["rows"], s["deleted"], s["live"]) for s in info["segments"]] == [(1, "flat", 300, 2, 298), (2, "flat", 1, 0, 1)]
    assert set(info["bytes_on_disk"]) == {"manifest", "catalog", "vectors", "ids", "faiss", "deleted"}
    assert all(size > 0 for size in info["bytes_on_disk"].values()) and info["layout"] == {"requested": "flat", "max_memory": None}
    assert info["description"] == "2 segments: 299 in 2 × flat, exact"
    assert main(["info", str(tmp_path / "index")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{tmp_path / 'index'}: 299 images, 64-d") and "segments (2):" in out and "generation 2, format 2" in out
