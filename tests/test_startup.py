"""A fast start: what `tusou` imports before it answers, seen through a fresh interpreter's sys.modules.

`--help`, `info` and every argument or path mistake must answer without torch, transformers,
open_clip or the OCR models (bench/startup.py times them); out-of-range numbers are one line and exit 2 before any
model loads. Nothing here is timed: the imports are what makes a start slow, so they are checked.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from indexer import BuildPlan, build_index
from tests.imagegen import write_images
from ui.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
MODEL_CODE = ("torch", "transformers", "open_clip", "rapidocr", "onnxruntime")
HEAVY = (*MODEL_CODE, "faiss")
ABSENT_WEIGHTS = "taiyi-clip-l14"
"""A model whose weights this machine does not have: a command that loaded it would fail otherwise."""

PROBE = f"""
import json, sys
from ui.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({{"code": code, "loaded": [name for name in {HEAVY!r} if name in sys.modules]}}))
"""
"""What the `tusou` console script runs (ui.cli.main), then which heavy modules it imported."""


def _python(*args: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": path})


def tusou(*argv: object) -> tuple[int, str, list[str], set[str]]:
    """`tusou ARGV` in a fresh interpreter: exit code, stdout, stderr lines, heavy modules imported."""
    result = _python("-c", PROBE, *map(str, argv))
    *out, report = result.stdout.splitlines() or [""]
    assert report.startswith("{"), result.stderr
    probe = json.loads(report)
    return probe["code"], "\n".join(out), [line for line in result.stderr.splitlines() if line.strip()], set(probe["loaded"])


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("startup-photos")
    write_images(folder, 8)
    out = tmp_path_factory.mktemp("startup-index") / "index"
    build_index(BuildPlan([folder], out, "test-tiny", device="cpu", workers=0, progress=False))
    return folder, out


@pytest.mark.parametrize("module", ["retrieval.errors", "retrieval", "indexer", "eval", "ui", "train"])
def test_importing_a_package_loads_nothing_heavy(module):
    result = _python("-c", f"import json, sys, {module}; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    assert result.returncode == 0 and json.loads(result.stdout) == [], result.stderr


@pytest.mark.parametrize("argv", [["--help"], *([name, "--help"] for name, _, _ in COMMANDS)], ids=" ".join)
def test_help_loads_nothing_heavy(argv):
    code, out, _, loaded = tusou(*argv)
    assert code == 0 and out.startswith(f"usage: tusou {argv[0] if len(argv) > 1 else ''}".rstrip()) and not loaded


def test_info_reads_the_index_without_model_code(index):
    """`info` checks the whole index, the FAISS file too (so it never calls healthy an index that
    `search` would refuse): faiss loads (about 30 ms beyond numpy, which the embeddings check needs),
    the model code does not."""
    _, directory = index
    code, out, _, loaded = tusou("info", directory)
    assert code == 0 and out.startswith(f"{directory}: 8 images, 64-d") and not loaded & set(MODEL_CODE)


def test_models_describes_every_entry_without_model_code():
    """Parameter counts and weight sources are registry data and local cache look-ups: `tusou models`
    without --measure builds nothing and imports no model library."""
    code, out, _, loaded = tusou("models")
    assert code == 0 and "taiyi-clip-l14 (default)" in out and "xlmr-h14" in out and not loaded


def _one_line_error(argv: list[str], values: dict[str, object], message: str) -> None:
    code, _, stderr, loaded = tusou(*(arg.format(**values) for arg in argv))
    assert code == 2 and len(stderr) == 1 and stderr[0].startswith("tusou: error: ") and message in stderr[0], stderr
    assert not loaded & set(MODEL_CODE), f"imported {sorted(loaded)} before reporting the mistake"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["search", "{missing}", "红色"], "no index at"),
        (["info", "{missing}"], "no index at"),
        (["reindex", "{missing}"], "no index at"),
        (["serve", "{missing}"], "no index at"),
        (["search", "{photos}", "红色"], "is not a tusou index"),
        (["search", "{index}", "红色", "--image", "{missing}"], "cannot use image"),
        (["label", "{missing}", "--labels", "猫", "--model", ABSENT_WEIGHTS], "cannot use image"),
        (["ocr", "{image}", "{missing}"], "cannot use image"),
        (["train", "--data", "{missing}", "--out", "{missing}", "--model", ABSENT_WEIGHTS], "no such folder"),
        (["eval", "--dataset", "flickr30k-cn", "--data", "{missing}", "--model", ABSENT_WEIGHTS], "no such folder"),
        (["eval", "--dataset", "imagenet-cn", "--data", "{photos}", "--templates", "{missing}"], "no such file"),
        (["label", "{image}", "--labels", "猫", "--model", "nope"], "unknown model 'nope'"),
        (["eval", "--dataset", "coco-cn", "--data", "{photos}", "--model", "test-tiny,nope"], "unknown model 'nope'"),
        (["eval", "--dataset", "coco-cn", "--data", "{photos}", "--format", "cna", "--model", ABSENT_WEIGHTS], "--format cna is not a layout of coco-cn"),
        (["label", "{image}", "--labels", " , ", "--model", ABSENT_WEIGHTS], "no labels"),
        (["label", "{image}", "--labels", "猫", "--templates", "一张照片", "--model", ABSENT_WEIGHTS], "{}"),
        (["serve", "{index}", "--model", ABSENT_WEIGHTS], "was built with model 'test-tiny'"),
        (["serve", "{index}", "--api-key", "two words"], "an API key must be visible ASCII characters without spaces"),
        (["serve", "{index}", "--api-key", ""], "an API key must be visible ASCII"),
        (["index", "{missing}", "--out", "{new}"], "no such file or folder"),
        (["index", "{photos}", "list:{missing}", "--out", "{new}"], "cannot read list file"),
        (["index", "{photos}", "--out", "{new}", "--ray-address", "127.0.0.1:1"], "--ray-address is for --engine ray"),
    ],
)
def test_path_and_name_mistakes_are_one_line_before_model_code(index, tmp_path, argv, message):
    photos, directory = index
    values = {"index": directory, "photos": photos, "missing": tmp_path / "missing", "image": next(photos.glob("image_0001.*")),
              "new": tmp_path / "new"}
    _one_line_error(argv, values, message)


INDEX = ["index", "{photos}", "--out", "{new}", "--model", ABSENT_WEIGHTS]
SEARCH = ["search", "{index}", "红色"]
TRAIN = ["train", "--data", "{photos}", "--out", "{new}", "--model", ABSENT_WEIGHTS]


@pytest.mark.parametrize(
    "argv, message",
    [
        ([*SEARCH, "-k", "0"], "argument -k: 0 is out of range: give an integer of at least 1"),
        ([*SEARCH, "-k", "-5"], "argument -k: -5 is out of range"),
        ([*SEARCH, "-k", "ten"], "argument -k: invalid int value: 'ten'"),
        ([*SEARCH, "--min-score", "5"], "min-score 5.0 is outside -1..1"),
        ([*SEARCH, "--image", "{image}", "--weight", "2"], "weight 2.0 is outside 0..1"),
        ([*SEARCH, "--dedupe", "2"], "dedupe threshold 2.0 is outside (0, 1]"),
        ([*SEARCH, "--dedupe", "nan"], "dedupe threshold nan is outside (0, 1]"),
        ([*INDEX, "--batch-size", "0"], "argument --batch-size: 0 is out of range"),
        ([*INDEX, "--batch-size", "-3"], "argument --batch-size: -3 is out of range"),
        ([*INDEX, "--workers", "-1"], "argument --workers: -1 is out of range: give an integer of at least 0"),
        ([*INDEX, "--checkpoint-every", "0"], "argument --checkpoint-every: 0 is out of range"),
        ([*INDEX, "--engine", "ray", "--gpus-per-worker", "-1"], "argument --gpus-per-worker: -1 is out of range: give a number of at least 0"),
        ([*INDEX, "--max-index-memory", "lots"], "--max-index-memory 'lots': give a size such as"),
        (["reindex", "{index}", "--max-index-memory=-1G"], "--max-index-memory '-1G': give a size such as"),
        ([*TRAIN, "--epochs", "0"], "argument --epochs: 0 is out of range"),
        ([*TRAIN, "--batch-size", "-1"], "argument --batch-size: -1 is out of range"),
        ([*TRAIN, "--lr", "-1"], "argument --lr: -1 is out of range: give a number above 0"),
        ([*TRAIN, "--lr", "0"], "argument --lr: 0 is out of range"),
        ([*TRAIN, "--lr", "nan"], "argument --lr: nan is out of range"),
        ([*TRAIN, "--seed", "-1"], "argument --seed: -1 is out of range: give an integer from 0 to 4294967295"),
        ([*TRAIN, "--seed", str(10**15)], "argument --seed: 1000000000000000 is out of range"),
        ([*TRAIN, "--checkpoint-every", "0"], "argument --checkpoint-every: 0 is out of range"),
        (["serve", "{index}", "--port", "70000"], "argument --port: 70000 is out of range: give an integer from 1 to 65535"),
        (["serve", "{index}", "--port", "0"], "argument --port: 0 is out of range"),
        (["eval", "--dataset", "coco-cn", "--data", "{photos}", "--batch-size", "0"], "argument --batch-size: 0 is out of range"),
    ],
)
def test_out_of_range_numbers_are_one_line_before_any_model(index, tmp_path, argv, message):
    photos, directory = index
    values = {"index": directory, "photos": photos, "new": tmp_path / "new", "image": next(photos.glob("image_0001.*"))}
    _one_line_error(argv, values, message)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--after", "2024-13"], "--after '2024-13': give a date such as 2024, 2024-06, 2024-06-01"),
        (["--before", "yesterday"], "--before 'yesterday': give a date"),
        (["--after", ""], "--after '': give a date"),
        (["--after", "2024-06-01T08:00+08:00"], "give local time without an offset"),
        (["--after", "2024-07", "--before", "2024-06"], "is not before --before 2024-06: nothing could match"),
        (["--near", "91,0,1"], "--near '91,0,1': latitude must be within -90..90"),
        (["--near", "1,2,-3"], "--near '1,2,-3': the distance must be a positive number of kilometres"),
        (["--near", "1,2"], "--near '1,2': give LAT,LON,KM"),
        (["--offset", "-1"], "argument --offset: -1 is out of range: give an integer of at least 0"),
        (["--type", ""], "--type '': give file types such as jpg,png"),
        (["--type", " , "], "--type ' , ': give file types"),
        (["--camera", " "], "--camera ' ': give some text"),
        (["--in", ""], "--in '': give a folder"),
        (["--sort", "bogus"], "argument --sort: invalid choice: 'bogus'"),
    ],
)
def test_bad_filter_values_are_one_line_before_any_model(index, flags, message):
    _one_line_error([*SEARCH, *flags], {"index": index[1]}, message)


QUERY_CHECKED = {("search", "--weight"), ("search", "--min-score"), ("search", "--dedupe")}
"""Numeric options whose ranges retrieval.search.query.Query checks (one rule, not two)."""


@pytest.mark.parametrize("name, options", [(name, options) for name, _, options in COMMANDS], ids=[name for name, _, _ in COMMANDS])
def test_every_numeric_option_has_a_range(name, options):
    """A bare `type=int` or `type=float` accepts any number: each numeric option either gets a
    range (ui.options.number) or is one that Query checks."""
    parser = argparse.ArgumentParser()
    options(parser)
    bare = {(name, action.option_strings[0]) for action in parser._actions if action.type in (int, float)}
    assert bare <= QUERY_CHECKED
