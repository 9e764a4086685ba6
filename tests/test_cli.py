"""The `tusou` command line: index, search, label, models; --json output; one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval.errors import TusouError
from retrieval.models.footprint import measure
from retrieval.models.registry import MODELS
from tests.imagegen import write_images
from ui.cli import main

TUSOU = str(Path(sys.executable).with_name("tusou"))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def built_index(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("cli-photos")
    write_images(folder, 30)
    out = tmp_path_factory.mktemp("cli-index") / "index"
    assert main(["index", str(folder), "--out", str(out), "--model", "test-tiny", "--workers", "0"]) == 0
    return folder, out


def test_index_json_summary_of_first_and_second_run(tmp_path, capsys):
    folder = tmp_path / "photos"
    write_images(folder, 12)
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "index"
    code, stdout, _ = run(capsys, "index", folder, "--out", out, "--model", "test-tiny", "--workers", "0", "--json")
    assert code == 0
    (summary,) = json_lines(stdout)
    assert set(summary) == {"added", "updated", "removed", "unchanged", "skipped", "embedded", "read", "resumed", "total", "index"}
    assert (summary["added"], summary["embedded"], summary["resumed"], summary["total"], summary["index"]) == (12, 12, 0, 12, str(out))
    assert summary["skipped"] == [{"path": str(folder / "broken.png"), "reason": summary["skipped"][0]["reason"]}]

    write_images(folder, 1, start=100)
    next(folder.glob("image_0003.*")).unlink()
    code, stdout, _ = run(capsys, "index", folder, "--out", out, "--json")  # the index remembers its model
    (summary,) = json_lines(stdout)
    assert (summary["added"], summary["updated"], summary["removed"], summary["unchanged"], summary["total"]) == (1, 0, 1, 11, 12)
    assert summary["embedded"] == 1


def test_search_by_text_and_by_image_json(built_index, capsys):
    folder, out = built_index
    code, stdout, _ = run(capsys, "search", out, "红色的圆形", "-k", "5", "--json")
    results = json_lines(stdout)
    assert code == 0 and [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    assert all(set(r) == {"rank", "score", "id", "path", "taken", "taken_from", "width", "height"} and Path(r["path"]).is_relative_to(folder)
               for r in results)  # camera only when known
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)

    query = next(folder.glob("image_0005.*"))
    code, stdout, _ = run(capsys, "search", out, "--image", query, "-k", "3", "--json")
    assert code == 0 and json_lines(stdout)[0]["path"] == str(query)
    code, stdout, _ = run(capsys, "search", out, "--image", query, "-k", "1000")
    assert code == 0 and len(stdout.splitlines()) == 30


def test_label_json_probabilities(built_index, capsys):
    folder, _ = built_index
    images = sorted(folder.glob("image_000[12].*"))
    code, stdout, _ = run(capsys, "label", *images, "--labels", "猫,狗，老虎", "--model", "test-tiny", "--json")
    rows = json_lines(stdout)
    assert code == 0 and len(rows) == 6
    for image in images:
        mine = [r for r in rows if r["image"] == str(image)]
        assert {r["label"] for r in mine} == {"猫", "狗", "老虎"}
        assert sum(r["probability"] for r in mine) == pytest.approx(1.0, abs=1e-4)
        assert [r["probability"] for r in mine] == sorted((r["probability"] for r in mine), reverse=True)


def test_models_lists_every_entry(capsys):
    code, stdout, _ = run(capsys, "models", "--json")
    entries = {row["name"]: row for row in json_lines(stdout)}
    assert code == 0 and {"taiyi-clip-l14", "test-tiny"} <= set(entries)
    assert entries["taiyi-clip-l14"]["dim"] == 768 and "IDEA-CCNL/Taiyi-CLIP-RoBERTa-102M-ViT-L-Chinese" in entries["taiyi-clip-l14"]["text"]
    assert entries["test-tiny"]["present"] is True
    # the registry's counts (BERT-base Chinese and CLIP's ViT-L/14 image tower), printed without building either
    assert entries["taiyi-clip-l14"]["parameters"] == {"text": 102_267_648, "image": 303_966_208}
    assert "text_query_ms" not in entries["test-tiny"], "timing only when asked (--measure)"
    code, stdout, _ = run(capsys, "models", "test-tiny")
    assert code == 0 and stdout.splitlines()[:2] == [
        "model        dim  parameters   weights",
        "test-tiny     64  1.5M + 118K  present",
    ]


@pytest.mark.parametrize("name", list(MODELS))
def test_stored_parameter_counts_are_the_built_architectures(name, hub_cache):
    """`tusou models` prints ModelEntry.parameters without building anything; here each entry is built
    by its own loaders at full size with weights left uninitialised (about half a second and a few MB
    each) and counted, so the stored counts cannot drift from the architectures. Not on torch's meta
    device: open_clip's create_model moves every model it builds to the CPU, which meta tensors refuse.
    `hub_cache` (empty, offline) makes the build the same on every machine."""
    stored = MODELS[name].parameters
    if stored is None:  # allowed only for an architecture that needs hub files to exist at all
        with pytest.raises(TusouError, match="not in the Hugging Face cache"):
            measure(name)
    else:
        assert measure(name).parameters == stored


def test_models_measure_times_a_text_query_on_the_named_models(capsys):
    code, stdout, _ = run(capsys, "models", "test-tiny,demo", "--measure", "--json")
    rows = json_lines(stdout)
    assert code == 0 and [row["name"] for row in rows] == ["test-tiny", "demo"]
    for row in rows:
        assert row["parameters"]["text"] > 0 and row["parameters"]["image"] > 0 and row["text_query_ms"] > 0
    code, stdout, _ = run(capsys, "models", "test-tiny", "--measure")
    header, row, *details = stdout.splitlines()
    assert header.split() == ["model", "dim", "parameters", "weights", "ms/query"]
    name, dim, text_count, plus, image_count, weights, latency = row.split()
    assert (name, dim, plus, weights) == ("test-tiny", "64", "+", "present") and float(latency) > 0
    assert text_count.endswith(("K", "M")) and details[0].split()[0] == "text:"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["search", "{index}", "   "], "empty query"),
        (["search", "{index}"], "nothing to search for"),
        (["search", "{index}", "猫", "--image", "{image}", "--weight", "1.5"], "weight 1.5 is outside 0..1"),
        (["search", "{index}", "猫", "--weight", "0.3"], "--weight mixes a text query with --image"),
        (["search", "{index}", "--not", "猫"], "negative terms only push results down"),
        (["search", "{index}", "猫", "--not", " "], "empty negative term"),
        (["search", "{index}", "猫", "--min-score", "2"], "min-score 2.0 is outside -1..1"),
        (["search", "{index}", "猫", "--dedupe", "0"], "dedupe threshold 0.0 is outside (0, 1]"),
        (["search", "{missing}", "猫"], "no index at"),
        (["search", "{index}", "--image", "{missing}"], "cannot use image"),
        (["index", "{missing}", "--out", "{new}", "--model", "test-tiny"], "no such file or folder"),
        (["index", "{folder}", "--out", "{index}", "--model", "taiyi-clip-l14"], "built with model 'test-tiny'"),
        (["index", "{folder}", "--out", "{new}", "--model", "nope"], "unknown model 'nope'"),
        (["label", "{missing}", "--labels", "猫", "--model", "test-tiny"], "cannot use image"),
        (["label", "{image}", "--labels", " , ", "--model", "test-tiny"], "no labels given"),
        (["label", "{image}", "--labels", "猫", "--templates", "没有占位符", "--model", "test-tiny"], "must contain {}"),
        (["models", "demo,nope", "--measure"], "unknown model 'nope'"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(built_index, tmp_path, capsys, argv, message):
    folder, index = built_index
    values = {"index": index, "folder": folder, "missing": tmp_path / "missing", "new": tmp_path / "new",
              "image": next(folder.glob("image_0001.*"))}
    code, stdout, stderr = run(capsys, *(arg.format(**values) for arg in argv))
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(("scanning", "embedding"))]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("tusou: error: ") and message in lines[0], stderr


def test_installed_console_script_end_to_end(built_index):
    folder, index = built_index
    result = subprocess.run([TUSOU, "search", str(index), "两个绿色的正方形", "-k", "2", "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and len(json_lines(result.stdout)) == 2
    result = subprocess.run([TUSOU, "search", str(index / "catalog.sqlite"), "猫"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "tusou: error:" in result.stderr
