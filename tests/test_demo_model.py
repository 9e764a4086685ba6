"""The shipped `demo` model: loads offline, and meets its quality bar on held-out data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.ocr_synthetic import read_jsonl
from retrieval import Searcher, load_model
from retrieval.datasets.synthetic import write_collection
from retrieval.search.normalise import normalise
from retrieval.search.zero_shot import label_images
from train.demo import DEMO_DIR, measure
from ui.demo import example_queries, prepare


@pytest.fixture(scope="module")
def demo_model():
    return load_model("demo", device="cpu")


def test_demo_weights_ship_in_the_package_and_load_offline(demo_model):
    assert (DEMO_DIR / "text" / "config.json").is_file() and (DEMO_DIR / "image.safetensors").is_file()
    assert demo_model.dim == 128 and demo_model.image_size == 64
    size = sum(p.stat().st_size for p in DEMO_DIR.rglob("*") if p.is_file())
    assert size < 10_000_000


def test_demo_quality_on_the_held_out_test_split(demo_model):
    figures = measure(demo_model)
    assert figures["text_to_image_R@1"] >= 0.40
    assert figures["text_to_image_R@5"] >= 0.75
    assert figures["text_to_image_R@10"] >= 0.85
    assert figures["zero_shot_colour_accuracy"] >= 0.90
    assert figures["zero_shot_shape_accuracy"] >= 0.90
    shipped = json.loads((DEMO_DIR / "quality.json").read_text())
    assert figures == shipped, "the docs' figures come from quality.json: re-measure after retraining"


def test_zero_shot_labels_hold_on_full_size_collection_images(demo_model, tmp_path):
    """The collection is drawn at 256 px, four times the training size: labels must still hold."""
    rows = [r for r in write_collection(tmp_path, 120, seed=123) if r["layout"] == "single"]
    for labels, truth in (("红色,橙色,黄色,绿色,蓝色,紫色,粉色,黑色", 0), ("圆形,正方形,三角形,星形,菱形,十字形", 1)):
        scores = label_images(demo_model, [tmp_path / r["file"] for r in rows], labels)
        accuracy = sum(row[0].label == r["shapes"][0][truth] for row, r in zip(scores, rows)) / len(rows)
        assert accuracy >= 0.85, (labels, accuracy)
        assert all(abs(sum(s.probability for s in row) - 1) < 1e-4 for row in scores)


def test_demo_setup_builds_once_and_finds_shapes_by_looks_and_text_by_its_words(tmp_path):
    index = prepare(tmp_path, count=20, device="cpu", text_pictures=4)
    queries = example_queries(tmp_path)
    assert len(queries) == 7
    searcher = Searcher(index, device="cpu")
    assert len(searcher) == 24 and searcher.store.manifest.model.name == "demo"
    shapes = searcher.search_text(queries[0], k=5)  # a caption: found by its looks
    assert len(shapes) == 5 and shapes[0].ocr is None and Path(shapes[0].path).name.startswith("shape_")
    drawn = {row["name"]: row["keys"] for row in read_jsonl(tmp_path / "collection" / "text" / "images.jsonl")}
    for query in queries[-3:]:  # a sign's, a chat's and a poster's words
        first = searcher.search_text(query, k=3)[0]
        assert query in drawn[Path(first.path).name] and first.ocr is not None, (query, first)
        assert normalise(query) in normalise(first.ocr.text)  # the line that found it, as read
    generation = searcher.store.generation
    prepare(tmp_path, count=20, device="cpu", text_pictures=4)
    assert Searcher(index, device="cpu").store.generation == generation
