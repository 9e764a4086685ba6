"""ONNX Runtime text towers: real exports of test-tiny and demo, their check, real onnxruntime
sessions, a real index searched through the CLI with --runtime onnx, and the refusals."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from retrieval.errors import TusouError
from retrieval.models.model import EmbeddingModel, load_model
from retrieval.models.onnx_export import CHECK_QUERIES, FP32_FLOOR, INT8_FLOOR, export_text_tower
from retrieval.models.onnx_text import OnnxText
from retrieval.models.runtime import export_cache, with_runtime
from retrieval.models.towers import TextEncoder
from retrieval.search.searcher import Searcher
from tests.imagegen import write_images
from ui.cli import main


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """tusou's cache in a folder of this module's own (XDG_CACHE_HOME), for every test in it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture(scope="module")
def tiny(cache) -> EmbeddingModel:
    return load_model("test-tiny", device="cpu")


@pytest.fixture(scope="module")
def tiny_export(tiny) -> Path:
    """test-tiny's float32 export where the cache keeps it, made as `--runtime onnx` makes it on first use."""
    model = with_runtime(tiny, "onnx")
    assert isinstance(model.text_model, OnnxText)
    return export_cache(tiny, int8=False)


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-export") / "demo.onnx"
    model = load_model("demo", device="cpu")
    return model, export_text_tower(model, out)


@pytest.fixture(scope="module")
def index(tmp_path_factory, cache) -> Path:
    folder = tmp_path_factory.mktemp("onnx-photos")
    write_images(folder, 24)
    out = tmp_path_factory.mktemp("onnx-index") / "index"
    assert main(["index", str(folder), "--out", str(out), "--model", "test-tiny", "--workers", "0"]) == 0
    return out


def run(capsys, *argv: object) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit:  # argparse's own refusals (an invalid choice) exit as they are parsed
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def one_error_line(code: int, stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(("scanning", "embedding"))]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("tusou: error: "), stderr
    return lines[0]


def test_exports_of_test_tiny_and_demo_pass_their_check_and_say_whose_they_are(tiny, tiny_export, demo_export):
    demo, report = demo_export
    assert report.lowest_cosine >= FP32_FLOOR and report.bytes == report.path.stat().st_size and not report.int8
    for model, path in ((tiny, tiny_export), (demo, report.path)):
        assert props(path) == {
            "tusou.model": model.name, "tusou.text_fingerprint": model.text_fingerprint(), "tusou.inputs": "input_ids",
            "tusou.context_length": str(model.text_model.context_length), "tusou.padding": "max_length", "tusou.int8": "false",
        }
        onnx_model = with_runtime(model, onnx_file=path)
        for batch in ([CHECK_QUERIES[0]], list(CHECK_QUERIES)):  # one character alone; all, the long one truncated
            cosines = np.sum(model.encode_texts(batch) * onnx_model.encode_texts(batch), axis=1)
            assert cosines.min() >= FP32_FLOOR


def test_a_tower_of_dynamic_padding_exports_with_its_mask(tiny, tmp_path):
    """The registry's other tokenizer setting: padding to the longest text, with the attention mask,
    so the graph's sequence axis varies and a batch's padding is masked."""
    model = load_model("test-tiny", device="cpu")  # its own: the module's `tiny` is not changed
    model.text_model.dynamic_padding = True
    report = export_text_tower(model, tmp_path / "dynamic.onnx")
    assert report.lowest_cosine >= FP32_FLOOR
    assert props(report.path)["tusou.inputs"] == "input_ids,attention_mask" and props(report.path)["tusou.padding"] == "longest"
    with pytest.raises(TusouError, match="other tokenizer settings"):
        OnnxText.open(report.path, tiny)  # the same weights, tokenized to 77 tokens without a mask


class WrongWhenExported(TextEncoder):
    """test-tiny's tower, except that the graph an exporter captures takes the first token's hidden
    state where eager mode takes the pooled output: an export of the right shape and wrong values,
    as a bad export of this BERT once was (cosine 0.87 to eager mode)."""

    def __init__(self, tower: TextEncoder):
        super().__init__()
        self.tower, self.context_length = tower, tower.context_length

    def tokenize(self, texts):
        return self.tower.tokenize(texts)

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():
            return self.tower.bert(**inputs).last_hidden_state[:, 0]
        return self.tower(**inputs)

    def weights(self):
        return self.tower.weights()


def test_a_bad_export_is_refused_and_nothing_is_written_at_the_destination(tiny, tmp_path):
    model = dataclasses.replace(tiny, text_model=WrongWhenExported(tiny.text_model), loaded=None)
    out = tmp_path / "bad.onnx"
    out.write_bytes(b"an earlier export")
    with pytest.raises(TusouError, match=r"refused: .*lowest cosine -?\d\.\d+, needs 0\.9999\); nothing written") as refused:
        export_text_tower(model, out)
    assert "\n" not in str(refused.value)
    assert out.read_bytes() == b"an earlier export" and list(tmp_path.iterdir()) == [out]  # nor a temporary file beside it


def search_json(capsys, index: Path, *extra: str) -> list[dict]:
    code, out, err = run(capsys, "search", index, "红色的圆", "-k", "10", "--json", *extra)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def assert_same_results(found: list[dict], expected: list[dict], tolerance: float) -> None:
    assert [row["id"] for row in found] == [row["id"] for row in expected]
    assert np.allclose([row["score"] for row in found], [row["score"] for row in expected], atol=tolerance, rtol=0)


def test_search_with_runtime_onnx_gives_torchs_results(index, tiny_export, capsys):
    torch_rows = search_json(capsys, index)
    assert len(torch_rows) == 10
    assert_same_results(search_json(capsys, index, "--runtime", "onnx"), torch_rows, 1e-4)  # the cache's export
    assert_same_results(search_json(capsys, index, "--onnx", tiny_export), torch_rows, 1e-4)


def test_the_searcher_holds_the_onnx_tower_and_the_weights_as_loaded(index, tiny, tiny_export, tmp_path):
    searcher = Searcher(index, device="cpu", runtime="onnx", precision="bf16")
    try:
        model = searcher.model
        assert isinstance(model.text_model, OnnxText) and model.text_model.session is not None
        assert (model.text_fingerprint(), model.fingerprint()) == (tiny.text_fingerprint(), tiny.fingerprint())
        assert next(model.image_model.parameters()).dtype == torch.bfloat16  # a precision casts the torch tower only
        assert len(searcher.search_image(str(write_images(tmp_path, 1)[0]), k=3)) == 3  # the image tower checked, as loaded
        cosine = float(np.sum(model.encode_texts(["红色的圆"]) * tiny.encode_texts(["红色的圆"])))
        assert cosine >= FP32_FLOOR
    finally:
        searcher.close()


def test_onnx_of_other_weights_is_refused_in_one_line(index, demo_export, capsys):
    _, report = demo_export
    code, _, err = run(capsys, "search", index, "红色的圆", "--onnx", report.path)
    line = one_error_line(code, err)
    assert "export of other weights ('demo'" in line and "'test-tiny'" in line


def test_int8_export_reports_its_cosine_and_runs_behind_its_flag(index, tiny, tmp_path, capsys):
    out = tmp_path / "tiny-int8.onnx"
    code, stdout, err = run(capsys, "export", "--model", "test-tiny", "--format", "onnx", "--out", out, "--int8")
    assert code == 0, err
    (line,) = stdout.splitlines()
    lowest = float(re.search(r"lowest cosine to torch (\d\.\d+)", line).group(1))
    assert line.startswith(f"{out}: test-tiny's text tower in ONNX (int8 weights)") and re.search(r"\d (KB|MB)$", line)
    assert INT8_FLOOR <= lowest < 1 and props(out)["tusou.int8"] == "true"
    rows = search_json(capsys, index, "--onnx", out)  # its own int8 flag says which runtime
    assert_same_results(search_json(capsys, index, "--runtime", "onnx-int8", "--onnx", out), rows, 1e-6)
    torch_rows = search_json(capsys, index)
    assert rows[0]["id"] == torch_rows[0]["id"] and abs(rows[0]["score"] - torch_rows[0]["score"]) < 0.01
    code, _, err = run(capsys, "search", index, "红色的圆", "--runtime", "onnx", "--onnx", out)
    assert "is an int8 export: use --runtime onnx-int8" in one_error_line(code, err)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["search", "{index}", "猫", "--runtime", "tensorrt"], "invalid choice: 'tensorrt'"),
        (["search", "{index}", "猫", "--onnx", "{missing}"], "no such file"),
        (["search", "{index}", "猫", "--runtime", "torch", "--onnx", "{export}"], "--onnx FILE is for --runtime onnx or onnx-int8"),
        (["serve", "{index}", "--runtime", "torch", "--onnx", "{export}", "--port", "1"], "--onnx FILE is for --runtime onnx"),
        (["export", "--model", "test-tiny", "--out", "{folder}"], "is a folder: name the file to write"),
        (["export", "--model", "nope", "--out", "{new}"], "unknown model 'nope'"),
        (["export", "--model", "test-tiny", "--out", "{new}", "--format", "tflite"], "invalid choice: 'tflite'"),
    ],
)
def test_mistakes_are_one_line(index, tiny_export, tmp_path, capsys, argv, message):
    values = {"index": index, "export": tiny_export, "missing": tmp_path / "missing.onnx", "folder": tmp_path, "new": tmp_path / "new.onnx"}
    code, _, err = run(capsys, *(arg.format(**values) for arg in argv))
    assert message in one_error_line(code, err)
    assert not (tmp_path / "new.onnx").exists()


@pytest.mark.parametrize("argv", [["search", "{index}", "猫", "--runtime", "onnx"], ["export", "--model", "test-tiny", "--out", "{new}"]])
def test_without_onnxruntime_the_fix_is_named(index, tmp_path, capsys, monkeypatch, argv):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if `tusou[onnx]` were not installed
    code, _, err = run(capsys, *(arg.format(index=index, new=tmp_path / "new.onnx") for arg in argv))
    assert "needs onnxruntime and onnx (onnxruntime is missing): pip install 'tusou[onnx]'" in one_error_line(code, err)


def test_an_onnx_tower_holds_no_torch_weights_and_says_what_it_runs_in(index, tiny_export):
    searcher = Searcher(index, device="cpu", onnx=tiny_export)
    try:
        shell = searcher.model.text_model._tokenize.__self__
        assert {p.device.type for p in shell.parameters()} == {"meta"}, "the torch text tower is not kept beside the export"
        assert searcher.model.text_model.runs_in == "onnx float32" and len(searcher.search_text("红色的圆", 3)) == 3
    finally:
        searcher.close()
