"""Evaluation runs: dataset layouts, hit@K by hand, re-scoring of predictions, caching, reports,
and several models compared in one table."""

from __future__ import annotations

import csv
import json
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.search.metrics import hits_at_k, rank_items, recall_at_k, top_k
from retrieval.datasets.cnclip_layout import encode_image_bytes, write_split
from retrieval.datasets.synthetic import COLOURS, make_split
from tests.imagegen import draw
from ui.cli import main


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_hit_at_k_by_hand():
    images = np.eye(4, dtype=np.float32)
    texts = unit([[1, 0, 0, 0], [0, 0.3, 0.9, 0], [0, 0, 0, 1], [0.5, 0.5, 0.5, 0.5]])
    correct = [{0}, {1}, {2, 3}, {3}]
    # text 1 ranks image 2 first, then image 1: a miss at K=1, a hit at K=2.
    # text 3 ties all four images: ties go to the lower index, so image 3 comes last.
    assert recall_at_k(texts, images, correct, ks=(1, 2, 4)) == {1: 0.5, 2: 0.75, 4: 1.0}
    assert top_k(np.array([[0.5, 0.9, 0.5, 0.9]]), 4).tolist() == [[1, 3, 0, 2]]
    assert hits_at_k(np.array([[2, 1], [0, 1]]), [{1}, {5}], ks=(1, 2)) == {1: 0.0, 2: 0.5}


def test_ranking_in_blocks_equals_ranking_at_once():
    rng = np.random.default_rng(0)
    queries, items = unit(rng.normal(size=(50, 8))), unit(rng.normal(size=(300, 8)))
    best = -np.sort(-(queries @ items.T), axis=1)[:, :11]
    # an 8-term float32 dot product rounds by under 8·2⁻²⁴ ≈ 5e-7, however it is blocked: no two of
    # anyone's top 11 closer than that, so the two rankings must be equal, not merely close
    assert np.diff(-best, axis=1).min() > 1e-6
    np.testing.assert_array_equal(rank_items(queries, items, 10, budget=1000), rank_items(queries, items, 10))


@pytest.fixture(scope="module")
def cnclip_set(tmp_path_factory) -> Path:
    """COCO-CN-like: synthetic images in Chinese-CLIP's layout, multi-caption images and
    captions with several correct images."""
    root = tmp_path_factory.mktemp("coco-cn")
    split = make_split(60, 2, seed=5, image_size=64)
    write_split(root, "test", enumerate(split.images), split.captions)
    assert any(len(c.image_ids) > 1 for c in split.captions)
    return root


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def independent_hits(predictions: list[dict], truth: dict[int, set[int]], k: int) -> float:
    """Re-scoring the submission file the plain way, as Chinese-CLIP's script would."""
    return 100 * sum(bool(set(p["image_ids"][:k]) & truth[p["text_id"]]) for p in predictions) / len(predictions)


def test_cnclip_run_writes_reports_that_rescore_identically_and_caches(cnclip_set, tmp_path, capsys):
    out, cache = tmp_path / "report", tmp_path / "cache"
    code, stdout, _ = run_cli(capsys, "eval", "--dataset", "coco-cn", "--data", cnclip_set, "--model", "demo",
                              "--device", "cpu", "--cache", cache, "--out", out)
    assert code == 0 and "text_to_image_R@1" in stdout and "coco-cn test" in stdout
    results = json.loads((out / "results.json").read_text())
    assert results["counts"]["images"] == 60 and results["counts"]["texts"] == 120
    assert results["settings"]["features_cached"] is False
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 120 and all(len(p["image_ids"]) == 10 for p in predictions)
    truth = {json.loads(row)["text_id"]: set(json.loads(row)["image_ids"]) for row in (cnclip_set / "test_texts.jsonl").read_text().splitlines()}
    for k in (1, 5, 10):
        assert independent_hits(predictions, truth, k) == pytest.approx(results["metrics"][f"text_to_image_R@{k}"], abs=0.01)
    assert results["metrics"]["text_to_image_R@10"] > 50, "the demo model must be far above chance (1/60 per caption)"
    assert Image.open(out / "recall.png").size[0] > 400 and "| text_to_image_R@1 |" in (out / "report.md").read_text()

    code, stdout, _ = run_cli(capsys, "eval", "--dataset", "coco-cn", "--data", cnclip_set, "--model", "demo",
                              "--device", "cpu", "--cache", cache, "--json")
    again = json.loads(stdout)
    assert again["settings"]["features_cached"] is True and again["metrics"] == results["metrics"]


def test_standard_base64_alphabet_is_accepted(tmp_path):
    import base64
    import io

    from eval.datasets import read_cnclip

    buffer = io.BytesIO()
    draw(1).save(buffer, format="JPEG")
    (tmp_path / "test_imgs.tsv").write_text(f"7\t{base64.b64encode(buffer.getvalue()).decode()}\n")
    (tmp_path / "test_texts.jsonl").write_text(json.dumps({"text_id": 1, "text": "图", "image_ids": [7]}) + "\n")
    assert read_cnclip(tmp_path, "test").images[7] == buffer.getvalue()


@pytest.mark.parametrize(
    "images, texts, message",
    [
        ("1\tnot base64!!\n", '{"text_id": 1, "text": "a", "image_ids": [1]}\n', "test_imgs.tsv line 1"),
        ("1\n", '{"text_id": 1, "text": "a", "image_ids": [1]}\n', "test_imgs.tsv line 1: expected image_id<TAB>base64"),
        ("{ok}", '{"text_id": 1, "text": "a", "image_ids": [1]}\n{"text_id": 2, "text": "b"}\n', "test_texts.jsonl line 2: missing field 'image_ids'"),
        ("{ok}", "{broken\n", "test_texts.jsonl line 1: not JSON"),
        ("{ok}", '{"text_id": 1, "text": "a", "image_ids": [9]}\n', "names image ids not in"),
    ],
)
def test_malformed_cnclip_files_name_file_and_line(tmp_path, capsys, images, texts, message):
    ok = f"1\t{encode_image_bytes(b'x')}\n"
    (tmp_path / "test_imgs.tsv").write_text(images.replace("{ok}", ok))
    (tmp_path / "test_texts.jsonl").write_text(texts)
    code, _, stderr = run_cli(capsys, "eval", "--dataset", "flickr30k-cn", "--data", tmp_path, "--model", "test-tiny", "--no-cache")
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1


def test_flickr30k_cna_layout(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    lines = []
    for image_id in (1000092795, 10002456, 1000268201):
        draw(image_id % 97).save(tmp_path / "images" / f"{image_id}.jpg")
        lines += [f"{image_id}#{k}\t第{k}句描述{image_id}" for k in range(5)]
    lines.append("99999#0\t一张不存在的图片")
    (tmp_path / "flickr30k_cna_test.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, stdout, _ = run_cli(capsys, "eval", "--dataset", "flickr30k-cn", "--format", "cna", "--data", tmp_path,
                              "--model", "test-tiny", "--no-cache", "--json")
    results = json.loads(stdout)
    assert code == 0 and results["counts"]["images"] == 3 and results["counts"]["texts"] == 15
    assert results["counts"]["missing_images"] == 1 and results["missing"][0]["image_id"] == 99999
    assert results["published"] == {}, "test-tiny has no published figures"
    (tmp_path / "flickr30k_cna_test.txt").write_text("1000092795 no tab here\n", encoding="utf-8")
    code, _, stderr = run_cli(capsys, "eval", "--dataset", "flickr30k-cn", "--format", "cna", "--data", tmp_path, "--model", "test-tiny")
    assert code == 2 and "flickr30k_cna_test.txt line 1" in stderr


def test_wukong_csv_with_img2dataset_folder_and_a_missing_row(tmp_path, capsys):
    shard = tmp_path / "00000"
    shard.mkdir()
    rows = [(f"https://example.invalid/{i}.jpg", f"第{i}张图片的描述") for i in range(6)]
    with open(tmp_path / "wukong_test.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["url", "caption"])
        writer.writerows(rows)
    for i, (url, caption) in enumerate(rows):
        if i == 3:
            continue  # never fetched
        draw(i).save(shard / f"{i:09d}.jpg")
        (shard / f"{i:09d}.json").write_text(json.dumps({"url": url, "caption": caption, "key": f"{i:09d}"}))
    (shard / f"{4:09d}.jpg").write_bytes(b"broken download")
    code, stdout, _ = run_cli(capsys, "eval", "--dataset", "wukong50k", "--data", tmp_path, "--model", "test-tiny",
                              "--no-cache", "--json")
    results = json.loads(stdout)
    assert code == 0 and results["counts"]["images"] == 4 and results["counts"]["texts"] == 4
    assert results["counts"]["missing_images"] == 2
    reasons = {json.dumps(m) for m in results["missing"]}
    assert any("not fetched" in r for r in reasons) and any("unreadable" in r for r in reasons)


def test_imagenet_cn_zero_shot_with_the_demo_model(tmp_path, capsys):
    split = make_split(160, 1, seed=11, image_size=64)
    singles = [(scene, data) for scene, data in zip(split.scenes, split.images) if scene.layout == "single"]
    names = list(COLOURS)[:4]
    for label, name in enumerate(names):
        folder = tmp_path / "val" / f"n{label:08d}"
        folder.mkdir(parents=True)
        for number, (scene, data) in enumerate(s for s in singles if s[0].shapes[0].colour == name):
            (folder / f"{number}.png").write_bytes(data)
    (tmp_path / "class_names.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    code, stdout, _ = run_cli(capsys, "eval", "--dataset", "imagenet-cn", "--data", tmp_path, "--model", "demo",
                              "--device", "cpu", "--no-cache", "--json")
    results = json.loads(stdout)
    assert code == 0 and results["counts"]["classes"] == 4
    assert results["metrics"]["top1"] >= 90 and results["metrics"]["top5"] == 100
    assert results["metrics"]["mean_per_class_recall"] >= 90
    (tmp_path / "class_names.txt").write_text("红色\n", encoding="utf-8")
    code, _, stderr = run_cli(capsys, "eval", "--dataset", "imagenet-cn", "--data", tmp_path, "--model", "demo", "--no-cache")
    assert code == 2 and "1 names for 4 class folders" in stderr


def test_table_sets_published_taiyi_figures_beside_measured():
    from eval.published import published
    from eval.report import table

    results = {"dataset": "flickr30k-cn", "split": "test", "model": {"name": "taiyi-clip-l14"},
               "counts": {"images": 1000, "texts": 5000}, "metrics": {"text_to_image_R@1": 57.9, "mean_recall": 70.0},
               "published": published("taiyi-clip-l14", "flickr30k-cn"), "published_source": "model card"}
    lines = table(results).splitlines()
    assert "1,000" in lines[0] and any(line.split() == ["text_to_image_R@1", "57.90", "58.32"] for line in lines)
    assert published("taiyi-clip-l14", "imagenet-cn") == {"top1": 55.04, "top5": 81.75}
    assert published("taiyi-clip-l14", "wukong50k")["text_to_image_R@10"] == 96.28


def test_published_figures_name_their_source_and_test_set():
    from eval.datasets import DATASETS
    from eval.published import PUBLISHED

    retrieval_metrics = {f"{d}_R@{k}" for d in ("text_to_image", "image_to_text") for k in (1, 5, 10)}
    for (model, dataset), found in PUBLISHED.items():
        assert dataset in DATASETS and found.source.startswith("https://") and found.setting, (model, dataset)
        assert set(found.metrics) <= ({"top1", "top5"} if dataset == "imagenet-cn" else retrieval_metrics), (model, dataset)
        assert all(0 < value <= 100 for value in found.metrics.values()), (model, dataset)
    taiyi, cn_clip = PUBLISHED[("taiyi-clip-l14", "flickr30k-cn")], PUBLISHED[("cn-clip-l14", "flickr30k-cn")]
    assert "Flickr30k-CNA" in taiyi.setting and "OFA-Sys/Chinese-CLIP" in cn_clip.source
    assert cn_clip.metrics["text_to_image_R@1"] == 68.0 and cn_clip.metrics["image_to_text_R@1"] == 80.2


def test_comparison_table_sets_each_models_published_figures_beneath_it():
    from eval.published import figures
    from eval.report import comparison_table

    def run(model: str, r1: float) -> dict:
        found = figures(model, "flickr30k-cn")
        metrics = {f"{d}_R@{k}": r1 for d in ("text_to_image", "image_to_text") for k in (1, 5, 10)} | {"mean_recall": r1}
        return {"dataset": "flickr30k-cn", "split": "test", "model": {"name": model}, "counts": {"images": 1000, "texts": 5000},
                "metrics": metrics, "published": dict(found.metrics) if found else {}, "published_source": found.cite() if found else None}

    lines = comparison_table([run("taiyi-clip-l14", 57.9), run("cn-clip-l14", 67.5), run("demo", 1.0)]).splitlines()
    assert lines[0] == "flickr30k-cn test · 3 models · images 1,000, texts 5,000"
    assert lines[1].split() == ["model", "t2i", "R@1", "t2i", "R@5", "t2i", "R@10", "i2t", "R@1", "i2t", "R@5", "i2t", "R@10", "mean", "R"]
    rows = [line.split() for line in lines[2:7]]
    assert rows[0] == ["taiyi-clip-l14"] + ["57.90"] * 7
    assert rows[1] == ["published", "58.32", "82.96", "89.40", "—", "—", "—", "—"], "Taiyi's card gives text→image only"
    assert rows[2][0] == "cn-clip-l14" and rows[3] == ["published", "68.00", "89.70", "94.40", "80.20", "96.60", "98.20", "—"]
    assert rows[4] == ["demo"] + ["1.00"] * 7, "no published row for a model without figures"
    sources = lines[7:]
    assert len(sources) == 2 and sources[0].startswith("taiyi-clip-l14: published: https://huggingface.co/IDEA-CCNL/")
    assert "Flickr30k-CNA test" in sources[0] and "Flickr30K-CN official test set" in sources[1]


def test_comparison_of_two_models_matches_their_single_runs(cnclip_set, tmp_path, capsys):
    """`--model demo,test-tiny`: one table, each row the figures of that model's own run."""
    common = ["eval", "--dataset", "coco-cn", "--data", cnclip_set, "--device", "cpu"]
    single = {}
    for name in ("demo", "test-tiny"):
        code, stdout, _ = run_cli(capsys, *common, "--model", name, "--cache", tmp_path / "cache", "--json")
        single[name] = json.loads(stdout)["metrics"]
    out = tmp_path / "compare"
    code, stdout, stderr = run_cli(capsys, *common, "--model", "demo,test-tiny", "--no-cache", "--out", out)
    assert code == 0 and "model 1 of 2: demo" in stderr and "model 2 of 2: test-tiny" in stderr
    lines = stdout.splitlines()
    assert lines[0].startswith("coco-cn test · 2 models · images 60, texts 120")
    for name, metrics in single.items():
        (row,) = [line.split() for line in lines if line.split()[:1] == [name]]
        assert row[1:] == [f"{value:.2f}" for value in metrics.values()], name
    saved = json.loads((out / "comparison.json").read_text())
    assert [m["model"]["name"] for m in saved["models"]] == ["demo", "test-tiny"]
    assert {m["model"]["name"]: m["metrics"] for m in saved["models"]} == single
    assert json.loads((out / "demo" / "results.json").read_text())["metrics"] == single["demo"]
    assert (out / "test-tiny" / "predictions.jsonl").is_file() and "| test-tiny |" in (out / "comparison.md").read_text()

    code, stdout, _ = run_cli(capsys, *common, "--model", "demo,test-tiny", "--cache", tmp_path / "cache", "--json")
    (printed,) = stdout.splitlines()
    assert code == 0 and {m["model"]["name"]: m["metrics"] for m in json.loads(printed)["models"]} == single


def test_models_are_evaluated_one_at_a_time(cnclip_set):
    """Each model is released before the next one loads, so big models never pile up in memory."""
    from eval.compare import evaluate_each
    from eval.run import evaluate_retrieval
    from retrieval.models.model import load_model

    loaded: list[weakref.ref] = []

    def load(name: str):
        assert all(ref() is None for ref in loaded), "the previous model is still in memory"
        model = load_model(name, device="cpu")
        loaded.append(weakref.ref(model))
        return model

    results = evaluate_each(["test-tiny", "demo", "test-tiny"], load,
                            lambda model: evaluate_retrieval(model, "coco-cn", cnclip_set, "test", None, None, progress=False),
                            progress=False)
    assert [r.results["model"]["name"] for r in results] == ["test-tiny", "demo", "test-tiny"]
    assert results[0].results["metrics"] == results[2].results["metrics"] and all(ref() is None for ref in loaded)


@pytest.mark.parametrize("models, message", [("demo,nope", "unknown model 'nope'"), (" , ", "no model named")])
def test_bad_model_list_is_one_line_before_any_model_loads(cnclip_set, capsys, models, message):
    code, _, stderr = run_cli(capsys, "eval", "--dataset", "coco-cn", "--data", cnclip_set, "--model", models, "--no-cache")
    assert code == 2 and stderr.strip().splitlines() == [stderr.strip()] and message in stderr and "model 1 of" not in stderr


def test_missing_weights_anywhere_in_a_list_fail_before_any_evaluation(cnclip_set, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, stdout, stderr = run_cli(capsys, "eval", "--dataset", "coco-cn", "--data", cnclip_set, "--model", "demo,test-tiny,taiyi-clip-l14",
                                   "--no-cache")
    (line,) = stderr.strip().splitlines()
    assert code == 2 and not stdout and "model 1 of" not in stderr
    assert line.startswith("tusou: error: weights of 'taiyi-clip-l14' are not on this machine and HF_HUB_OFFLINE is set")
