"""Index builds: the directory format, incremental updates in place, broken files, resumption."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from indexer import BuildPlan, build_index
from retrieval import EmbeddingModel, Searcher, TusouError, load_model
from retrieval.search.query import Query
from tests.imagegen import draw, write_images
from tests.stored import read_back, stored_vectors
from tests.test_encoders import saved_bert


def test_build_writes_a_complete_index(tmp_path, image_folder, tiny_model):
    summary = build_index(BuildPlan([image_folder], tmp_path / "index", model=tiny_model, workers=0, precision="fp32", progress=False))
    assert (summary.added, summary.updated, summary.removed, summary.unchanged, summary.total) == (40, 0, 0, 0, 40)
    index = read_back(tmp_path / "index")
    manifest = index.manifest
    assert manifest.model.name == "test-tiny" and manifest.model.fingerprint == tiny_model.fingerprint()
    assert (manifest.dim, manifest.metric, manifest.format_version, index.generation) == (64, "inner_product", 2, 1)
    assert sorted(os.listdir(tmp_path / "index")) == [".lock", "catalog.sqlite", "manifest.json", "segments"]
    assert [(row.id, row.count, row.deleted, row.index_entry.type) for row in index.segments] == [(1, 40, 0, "flat")]
    assert index.layout == {"requested": "auto", "max_memory": None}
    assert index.embeddings.dtype == np.float16 and index.embeddings.shape == (40, 64)
    assert len({item.id for item in index.items}) == 40
    item = next(i for i in index.items if i.path.endswith("image_0014.webp"))
    assert (item.width, item.height) == draw(14).size
    assert item.size == os.path.getsize(item.path) and len(item.sha256) == 64
    assert {Path(i.path).suffix for i in index.items} == {".jpg", ".png", ".webp", ".bmp", ".gif", ".JPEG"}
    # the stored vectors are the model's vectors of the files, within float16 rounding
    picture = tiny_model.encode_images([__import__("PIL.Image").Image.open(item.path).convert("RGB")])
    row = index.items.index(item)
    np.testing.assert_allclose(index.embeddings[row].astype(np.float32), picture[0], atol=2e-3)


def test_every_image_finds_itself_first(tmp_path, image_folder, tiny_model):
    build_index(BuildPlan([image_folder], tmp_path / "index", model=tiny_model, workers=2, progress=False))
    searcher = Searcher(tmp_path / "index", model=tiny_model)
    for path in stored_vectors(tmp_path / "index"):
        results = searcher.search_image(path, k=3)
        assert results[0].path == path and results[0].rank == 1
        assert results[0].score == pytest.approx(1.0, abs=2e-3)
        assert results[0].score >= results[1].score >= results[2].score


def test_rerun_embeds_only_what_changed(tmp_path, fresh_folder, tiny_model):
    out = tmp_path / "index"
    build_index(BuildPlan([fresh_folder], out, model=tiny_model, workers=0, progress=False))
    before = {item.path: item for item in read_back(out).items}
    files = {path: path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file() and path.name != ".lock"}

    again = build_index(BuildPlan([fresh_folder], out, model=tiny_model, workers=0, progress=False))
    assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, 24)
    assert read_back(out).generation == 1, "an unchanged collection rewrites nothing"
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file() and path.name != ".lock"} == files

    added = write_images(fresh_folder, 1, start=500)[0]
    changed = fresh_folder / "image_0001.png"
    draw(999, size=(90, 60)).save(changed)
    removed = fresh_folder / "image_0002.webp"
    removed.unlink()
    summary = build_index(BuildPlan([fresh_folder], out, model=tiny_model, workers=0, progress=False))
    assert (summary.added, summary.updated, summary.removed, summary.unchanged, summary.total) == (1, 1, 1, 22, 24)

    index = read_back(out)
    after = {item.path: item for item in index.items}
    assert str(added) in after and str(removed) not in after
    assert after[str(changed)].id == before[str(changed)].id and (after[str(changed)].width, after[str(changed)].height) == (90, 60)
    assert after[str(added)].id not in {item.id for item in before.values()}
    assert all(after[p].id == before[p].id for p in after if p in before)
    # the update is one small segment of the two images embedded, and segment 1's two old rows deleted
    assert [(row.id, row.count, row.deleted) for row in index.segments] == [(1, 24, 2), (2, 2, 0)] and index.generation == 2
    assert sorted(os.listdir(out / "segments")) == [
        "000001.deleted.000002.npy", "000001.faiss", "000001.ids.npy", "000001.vectors.npy", "000002.faiss", "000002.ids.npy", "000002.vectors.npy"]
    searcher = Searcher(out, model=tiny_model)
    assert searcher.search_image(changed, k=1)[0].path == str(changed)


def test_broken_files_are_reported_and_the_rest_indexed(tmp_path, fresh_folder, tiny_model):
    (fresh_folder / "notes.jpg").write_text("this is text, not a JPEG")
    (fresh_folder / "empty.png").write_bytes(b"")
    good = (fresh_folder / "image_0006.jpg").read_bytes()
    (fresh_folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    summary = build_index(BuildPlan([fresh_folder], tmp_path / "index", model=tiny_model, workers=2, progress=False))
    reasons = {Path(item["path"]).name: item["reason"] for item in summary.skipped}
    assert set(reasons) == {"notes.jpg", "empty.png", "truncated.jpg"}
    assert reasons["notes.jpg"].startswith("not an image")
    assert summary.total == summary.added == 24


def other_image_weights(tmp_path: Path) -> EmbeddingModel:
    """test-tiny with an image tower of its own (the text tower is test-tiny's)."""
    import open_clip
    import torch

    torch.manual_seed(5)
    torch.save(open_clip.create_model("tusou-tiny-vit").state_dict(), tmp_path / "other.bin")
    return load_model("test-tiny", device="cpu", image_weights=tmp_path / "other.bin")


@pytest.fixture
def built(tmp_path, image_folder, tiny_model) -> Path:
    build_index(BuildPlan([image_folder], tmp_path / "index", model=tiny_model, workers=0, progress=False))
    return tmp_path / "index"


def test_opening_with_another_model_is_a_clear_error(tmp_path, built, image_folder):
    with pytest.raises(TusouError, match="built with model 'test-tiny', not 'taiyi-clip-l14'"):
        build_index(BuildPlan([image_folder], built, "taiyi-clip-l14", progress=False))
    other = other_image_weights(tmp_path)
    with pytest.raises(TusouError, match="other weights of 'test-tiny'"):
        Searcher(built, model=other).search_image(draw(3))  # at load or at the first image query: the precision decides
    with pytest.raises(TusouError, match="other weights"):
        build_index(BuildPlan([image_folder], built, model=other, progress=False))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_text_search_checks_the_text_tower_and_an_image_query_the_image_tower(tmp_path, built, tiny_model, precision):
    manifest = read_back(built).manifest
    assert (manifest.model.text_fingerprint, manifest.model.image_fingerprint) == (tiny_model.text_fingerprint(), tiny_model.image_fingerprint())
    searcher = Searcher(built, model=other_image_weights(tmp_path), precision=precision)  # a cast keeps the fingerprints
    assert len(searcher.search_text("红色", k=3)) == 3  # the text tower is the index's own
    refused = "was built with other weights of 'test-tiny' \\(image tower fingerprint"
    for needs_the_image_tower in (
        lambda: searcher.search_image(draw(3)),
        lambda: searcher.search(Query(text="红色", image=draw(3))),
        lambda: searcher.label(draw(3), "猫,狗"),
    ):
        with pytest.raises(TusouError, match=refused):
            needs_the_image_tower()
    saved_bert(tmp_path / "bert")
    other_text = load_model("test-tiny", device="cpu", text_weights=tmp_path / "bert")
    with pytest.raises(TusouError, match="other weights of 'test-tiny' \\(text tower fingerprint"):
        Searcher(built, model=other_text, precision=precision)
    assert Searcher(built, model=tiny_model, precision=precision).search_image(draw(3), k=1)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_text_only_search_builds_only_the_text_tower(built, precision):
    searcher = Searcher(built, device="cpu", precision=precision)
    assert searcher.search_text("红色", k=3) and not searcher.model.image_built
    assert searcher.search_image(draw(3), k=1) and searcher.model.image_built


def test_concurrent_first_image_queries_share_one_check(built, tiny_model):
    searcher = Searcher(built, model=tiny_model, precision="fp32")
    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(lambda n: searcher.search_image(draw(n), k=1)[0].path, range(8)))
    assert found == [searcher.search_image(draw(n), k=1)[0].path for n in range(8)]


def test_an_index_with_one_fingerprint_for_both_towers_is_checked_whole_at_load(tmp_path, built, tiny_model):
    """What tusou wrote before per-tower fingerprints: it opens as it is, and is checked as it was."""
    path = built / "manifest.json"
    raw = json.loads(path.read_text())
    for key in ("text_fingerprint", "image_fingerprint"):
        del raw["model"][key]
    path.write_text(json.dumps(raw))
    with pytest.raises(TusouError, match="was built with other weights of 'test-tiny' \\(fingerprint"):
        Searcher(built, model=other_image_weights(tmp_path), precision="fp32")
    assert Searcher(built, model=tiny_model, precision="fp32").search_image(draw(3), k=1)
    from indexer.reindex import reindex

    reindex(built, "flat", progress=False)
    assert json.loads(path.read_text())["model"] == raw["model"], "an older model entry is written back as it was read"


def test_out_directory_that_is_not_an_index_is_left_alone(tmp_path, image_folder, tiny_model):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    with pytest.raises(TusouError, match="is not a tusou index"):
        build_index(BuildPlan([image_folder], tmp_path / "mine", model=tiny_model, progress=False))
    assert os.listdir(tmp_path / "mine") == ["thesis.txt"]


def test_no_images_or_missing_path_is_an_error(tmp_path, tiny_model):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TusouError, match="no images found"):
        build_index(BuildPlan([tmp_path / "empty"], tmp_path / "index", model=tiny_model, progress=False))
    with pytest.raises(TusouError, match="no such file or folder"):
        build_index(BuildPlan([tmp_path / "nope"], tmp_path / "index", model=tiny_model, progress=False))
    assert not (tmp_path / "index").exists()




def test_the_app_answers_an_image_query_on_an_index_of_other_image_weights_with_the_reason(tmp_path, built):
    from ui.app import SearchApp
    from ui.backend import Backend

    app = SearchApp(Backend(Searcher(built, model=other_image_weights(tmp_path), precision="fp32")))
    gallery, _, status = app.search_text("红色", 3)
    assert len(gallery) == 3
    picture = tmp_path / "query.png"
    draw(3).save(picture)
    for answer in (app.search_image(str(picture), 3), app.search_text("红色", 3, reference=str(picture)), app.label(str(picture), "猫,狗", "")):
        assert "was built with other weights of 'test-tiny' (image tower fingerprint" in answer[-1]
