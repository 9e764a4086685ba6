"""Index types: build, reindex and search for each of flat / hnsw / ivf / ivfpq, and `auto`'s choices."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from PIL import Image

from bench.vectors import ClipLikeSpace
from indexer import BuildPlan, build_index
from indexer.commit import Change, create_index
from indexer.faiss_build import exact_neighbours, plan_index, recall_at_k
from indexer.plan import Layout
from retrieval import Searcher, TusouError
from retrieval.models.devices import BF16_MIN_PARAMETERS, compute_dtype, has_bf16_instructions
from retrieval.sizes import parse_size
from retrieval.store.index_types import INDEX_TYPES
from retrieval.store.model_ref import ModelRef, cast
from retrieval.store.records import CatalogItem
from retrieval.store.store import open_store
from tests.imagegen import write_images
from tests.stored import read_back
from ui.cli import main

COUNT = 3000
"""Enough vectors for every type to train (ivfpq needs 624), few enough for a second's build."""
GiB = 1024**3


@pytest.fixture(scope="module")
def space() -> ClipLikeSpace:
    return ClipLikeSpace(dim=64, clusters=60, seed=3)


@pytest.fixture
def vector_index(tmp_path, tiny_model, space) -> Path:
    """A real index directory over COUNT clustered 64-d vectors, as a build of test-tiny writes it."""
    vectors = space.array(COUNT).astype(np.float16)
    items = [CatalogItem(path=f"/photos/{i:05d}.jpg", size=1, mtime_ns=1, sha256="0", width=1, height=1, id=i) for i in range(COUNT)]
    (tmp_path / "idx").mkdir()
    change = Change(items, lambda out: np.copyto(out, vectors), COUNT, Layout("flat", None))
    create_index(tmp_path / "idx", ModelRef.of(tiny_model), 64, change, progress=False)
    return tmp_path / "idx"


@pytest.mark.parametrize("index_type", list(INDEX_TYPES))
def test_reindex_builds_each_type_from_stored_embeddings_and_searches_well(vector_index, tiny_model, space, index_type):
    before = read_back(vector_index)

    from indexer.reindex import reindex

    done = reindex(vector_index, index_type, progress=False)

    after = read_back(vector_index)
    assert done.entry.type == index_type and done.count == COUNT and after.index_types == {index_type}
    assert after.layout == {"requested": index_type, "max_memory": None} and after.generation == before.generation + 1
    assert [i.id for i in after.items] == [i.id for i in before.items]
    assert np.array_equal(after.embeddings, before.embeddings), "no re-embedding: the same float16 vectors, moved"
    (segment,) = after.segments
    stored = open_store(vector_index).view().segments[0]
    assert type(faiss.downcast_index(stored.faiss_index)).__name__ == {
        "flat": "IndexFlatIP", "hnsw": "IndexHNSWFlat", "ivf": "IndexIVFScalarQuantizer", "ivfpq": "IndexIVFPQ"}[index_type]
    if index_type in ("ivf", "ivfpq"):  # the tuned nprobe is stored, and set on the index when opened
        assert faiss.extract_index_ivf(stored.faiss_index).nprobe == segment.index_entry.search["nprobe"]
    if index_type != "flat":
        assert segment.index_entry.search["recall_at_10"] >= 0.9

    searcher = Searcher(vector_index, model=tiny_model)
    queries = space.array(50, queries=True)
    results = searcher.search_vectors(queries, k=10)
    truth = exact_neighbours(after.embeddings, queries, 10)  # items are in id order here: row i is item i
    assert recall_at_k(np.array([[r.id for r in row] for row in results]), truth) >= 0.9
    embeddings = np.asarray(after.embeddings, dtype=np.float32)
    for query, row in zip(queries, results):  # every type reports the exact cosine, best first
        scores = [r.score for r in row]
        assert scores == sorted(scores, reverse=True)
        np.testing.assert_allclose(scores, embeddings[[r.id for r in row]] @ query, atol=2e-3 if index_type == "hnsw" else 1e-5)
    stored_vector = embeddings[1234:1235] / np.linalg.norm(embeddings[1234])
    assert searcher.search_vectors(stored_vector, k=1)[0][0].id == 1234


def test_auto_picks_by_size_and_memory_budget():
    assert plan_index(50_000, 768, "auto", 12 * GiB).type == "flat"
    assert plan_index(1_000_000, 768, "auto", 12 * GiB).type == "hnsw"
    one_million = plan_index(1_000_000, 768, "auto", 1 * GiB)
    assert one_million.type == "ivf" and one_million.bytes <= GiB
    assert plan_index(10_000_000, 768, "auto", 12 * GiB).type == "ivf"
    squeezed = plan_index(10_000_000, 768, "auto", 1 * GiB)
    assert squeezed.type == "ivfpq" and squeezed.bytes <= GiB
    assert plan_index(200_000, 768, "auto", 100 * 1024**2).type == "ivfpq"
    with pytest.raises(TusouError, match="do not fit"):
        plan_index(10_000_000, 768, "auto", 10 * 1024**2)
    with pytest.raises(TusouError, match="over the 1.0 GB budget"):
        plan_index(1_000_000, 768, "flat", GiB)
    with pytest.raises(TusouError, match="ivfpq needs at least 624 images"):
        plan_index(300, 64, "ivfpq")
    with pytest.raises(TusouError, match="ivf needs at least 39 images"):
        plan_index(30, 64, "ivf")


def test_sizes_parse_as_users_write_them():
    assert [parse_size(s) for s in ("1G", "800M", "1.5g", "2GiB", "1000")] == [GiB, 800 * 1024**2, int(1.5 * GiB), 2 * GiB, 1000]
    with pytest.raises(TusouError, match="give a size"):
        parse_size("lots")


def test_index_keeps_its_type_and_changes_it_without_re_embedding(image_folder, tmp_path, tiny_model):
    folder, out = tmp_path / "photos", tmp_path / "idx"
    shutil.copytree(image_folder, folder)
    build_index(BuildPlan([folder], out, model=tiny_model, index_type="ivf", progress=False))
    assert read_back(out).index_types == {"ivf"} and read_back(out).layout == {"requested": "ivf", "max_memory": None}

    again = build_index(BuildPlan([folder], out, model=tiny_model, progress=False))
    assert read_back(out).index_types == {"ivf"} and again.unchanged == again.total and read_back(out).generation == 1

    write_images(folder, 1, start=900)  # a few new images on an index of segments: a small exact segment
    build_index(BuildPlan([folder], out, model=tiny_model, progress=False))
    assert [(row.count, row.index_entry.type) for row in read_back(out).segments] == [(40, "ivf"), (1, "flat")]

    switched = build_index(BuildPlan([folder], out, model=tiny_model, index_type="hnsw", progress=False))
    assert switched.unchanged == switched.total == 41 and switched.added == 0
    assert read_back(out).layout == {"requested": "hnsw", "max_memory": None} and read_back(out).generation == 3
    assert read_back(out).index_types == {"hnsw"}, "a new layout merges every segment into one of its type (indexer.merge)"


def test_cli_index_reindex_info_and_search(image_folder, tmp_path, capsys):
    out = tmp_path / "idx"
    assert main(["index", str(image_folder), "--out", str(out), "--model", "test-tiny", "--index-type", "flat", "--json"]) == 0
    capsys.readouterr()
    assert main(["reindex", str(out), "--index-type", "hnsw", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["type"] == "hnsw"

    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["count"], info["index_type"]["type"], info["model"]["name"]) == (40, "hnsw", "test-tiny")
    assert info["index_type"]["search"]["recall_at_10"] >= 0.9 and "ef_search" in info["index_type"]["search"]
    assert all(size > 0 for size in info["bytes_on_disk"].values())
    assert main(["info", str(out)]) == 0
    assert "hnsw [M 32, ef_search" in capsys.readouterr().out

    image = next(p for p in sorted(image_folder.rglob("*.png")))
    assert main(["search", str(out), "--image", str(image), "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == str(image.resolve())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["reindex", "{missing}"], "no index at"),
        (["reindex", "{idx}", "--index-type", "flat", "--max-index-memory", "1K"], "over the 1.0 KB budget"),
        (["reindex", "{idx}", "--max-index-memory", "much"], "give a size"),
        (["info", "{missing}"], "no index at"),
    ],
)
def test_cli_reindex_and_info_mistakes_are_one_line(vector_index, tmp_path, capsys, argv, message):
    argv = [a.format(missing=tmp_path / "nothing", idx=vector_index) for a in argv]
    before = sorted(p.name for p in vector_index.iterdir() if p.name != ".lock")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert sorted(p.name for p in vector_index.iterdir() if p.name != ".lock") == before  # nothing written or lost


def test_batched_text_queries_equal_single_ones_and_repeat_from_the_cache(vector_index, tiny_model):
    searcher = Searcher(vector_index, model=tiny_model, precision="fp32")
    queries = ["红色的花", "海边的日落", "红色的花"]
    batched = searcher.search_texts(queries, k=5)
    assert list(searcher.cache.vectors) == ["海边的日落", "红色的花"]  # each distinct query embedded once
    fresh = Searcher(vector_index, model=tiny_model, precision="fp32", cache_size=0)
    singles = [fresh.search_text(q, k=5) for q in queries]
    assert [[r.id for r in row] for row in batched] == [[r.id for r in row] for row in singles]
    np.testing.assert_allclose([[r.score for r in row] for row in batched], [[r.score for r in row] for row in singles], atol=1e-6)
    assert len(fresh.cache.vectors) == 0


def test_bf16_queries_stay_within_cosine_0999_of_fp32(vector_index, tiny_model):
    texts = ["两个绿色的正方形", "一只在草地上奔跑的小狗", "城市的夜景"]
    fp32 = Searcher(vector_index, model=tiny_model, precision="fp32")
    bf16 = Searcher(vector_index, model=tiny_model, precision="bf16")
    assert bf16.model.dtype == next(bf16.model.text_model.parameters()).dtype == torch.bfloat16
    assert tiny_model.dtype == torch.float32  # the model passed in is left as it is
    cosines = np.sum(fp32.cache.encode(fp32.encoder, texts) * bf16.cache.encode(bf16.encoder, texts), axis=1)
    assert cosines.min() >= 0.999
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    assert float(fp32.model.encode_images([image])[0] @ bf16.model.encode_images([image])[0]) >= 0.999


def test_auto_takes_bfloat16_only_for_a_large_tower_on_a_cpu_that_multiplies_it_natively(tiny_model):
    cpu = torch.device("cpu")
    large, small = BF16_MIN_PARAMETERS, BF16_MIN_PARAMETERS - 1
    assert compute_dtype(cpu, "auto", large) == (torch.bfloat16 if has_bf16_instructions() else torch.float32)
    assert compute_dtype(cpu, "auto", small) == compute_dtype(cpu, "fp32", large) == torch.float32
    assert compute_dtype(cpu, "bf16", small) == torch.bfloat16  # asked for: always
    assert cast(tiny_model, "auto").dtype == torch.float32  # test-tiny is small
