"""The real loading path: the Hugging Face cache is honoured, missing weights fail fast, and no
weights file is ever unpickled beyond plain tensors."""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import save_file

from retrieval import TusouError, load_model
from retrieval.models.image_tower import checkpoint
from retrieval.models.registry import get_entry
from retrieval.models.text_tower import load_text_tower
from tests.test_encoders import QUERIES, saved_bert
from ui.cli import main

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def put_in_cache(cache: Path, repo: str, source: Path) -> Path:
    """Lay files out as huggingface_hub's cache does: models--org--name/{refs/main, snapshots/<commit>/}."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / COMMIT
    shutil.copytree(source, snapshot) if source.is_dir() else (snapshot.mkdir(parents=True), shutil.copy(source, snapshot))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    return snapshot


def test_taiyi_text_tower_loads_from_the_hf_cache(tmp_path, hub_cache):
    entry = get_entry("taiyi-clip-l14")
    reference = saved_bert(tmp_path / "bert")
    put_in_cache(hub_cache, entry.text.hub_id, tmp_path / "bert")
    tower = load_text_tower(entry, pretrained=True, text_weights=None)
    model = tower.bert
    ids = tower.tokenizer(QUERIES, padding="max_length", truncation=True, max_length=77, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        np.testing.assert_allclose(model(ids)[1].numpy(), reference(ids)[1].numpy(), atol=1e-6)


def test_openai_vit_checkpoint_resolves_from_the_hf_cache_with_clip_preprocessing(tmp_path, hub_cache):
    weights = tmp_path / "open_clip_model.safetensors"
    weights.write_bytes(b"stand-in: only its path is resolved here")
    put_in_cache(hub_cache, "timm/vit_large_patch14_clip_224.openai", weights)
    entry = get_entry("taiyi-clip-l14")
    path, preprocess = checkpoint(entry.name, entry.image, image_weights=None)
    assert path.name == "open_clip_model.safetensors" and COMMIT in str(path)
    assert preprocess["interpolation"] == "bicubic" and preprocess["resize_mode"] == "shortest"
    assert preprocess["mean"] == pytest.approx((0.48145466, 0.4578275, 0.40821073))


def test_missing_weights_offline_name_the_fix(hub_cache):
    entry = get_entry("taiyi-clip-l14")
    with pytest.raises(TusouError) as info:
        checkpoint(entry.name, entry.image, image_weights=None)
    message = str(info.value)
    assert "HF_HUB_OFFLINE" in message and "--model demo" in message and "--image-weights" in message


def test_cli_with_default_model_offline_is_one_line_no_traceback(tmp_path, image_folder):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty-cache"))
    tusou = Path(sys.executable).with_name("tusou")
    result = subprocess.run(
        [str(tusou), "index", str(image_folder), "--out", str(tmp_path / "index")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tusou: error: ") and "--model demo" in lines[0] and "--text-weights" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "index").exists()


class Touch:
    """Unpickling this creates `marker`: the stand-in for any code a pickle can run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class FailsOnlyWeightsOnly:
    """A tensor whose pickled state torch's weights-only unpickler rejects with TypeError, where a full
    unpickle accepts it: how open_clip 3.3's retry without weights_only is reached."""

    def __reduce__(self):
        storage = torch.zeros(2)._typed_storage()
        return (torch._utils._rebuild_tensor_v2, (storage, 0, (2,), (1,), False, OrderedDict()), (False, None, None))


def armed_checkpoint(path: Path, marker: Path, form: str) -> Path:
    if form == "torch-zip":
        torch.save({"visual.conv1.weight": Touch(marker)}, path)
    elif form == "bare-pickle":
        path.write_bytes(pickle.dumps({"visual.conv1.weight": Touch(marker)}, protocol=2))
    else:  # "typeerror-first": the payload comes after a tensor the safe unpickler chokes on
        torch.save({"visual.conv1.weight": FailsOnlyWeightsOnly(), "visual.proj": Touch(marker)}, path)
    return path


PICKLE_FORMS = ["torch-zip", "bare-pickle", "typeerror-first"]


@pytest.fixture
def unsafe_torch_default(monkeypatch):
    """torch.load without an explicit weights_only unpickles anything: only explicit callers stay safe."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


def assert_refused_unsafe(capsys, argv: list[str], weights: Path, fix: str) -> None:
    capsys.readouterr()  # what setting up the files printed
    assert main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("tusou: error: ") and f"{weights} cannot be loaded safely" in lines[0], lines[0]
    assert fix in lines[0] and "tusou never unpickles code" in lines[0]


@pytest.mark.parametrize("form", PICKLE_FORMS)
def test_pickled_code_in_image_weights_never_runs(tmp_path, image_folder, capsys, unsafe_torch_default, form):
    marker = tmp_path / "UNPICKLED"
    weights = armed_checkpoint(tmp_path / "evil.pt", marker, form)
    image = next(image_folder.rglob("*.png"))
    argv = ["label", str(image), "--labels", "红色,蓝色", "--model", "test-tiny", "--image-weights", str(weights)]
    assert_refused_unsafe(capsys, argv, weights, "re-save it as .safetensors")
    assert not marker.exists(), "loading the image weights ran pickled code"
    with pytest.raises(TusouError, match="cannot be loaded safely"):
        load_model("test-tiny", device="cpu", image_weights=weights).image_model
    assert not marker.exists()
    with contextlib.suppress(RuntimeError):  # a bare pickle runs, then fails torch's magic-number check
        torch.load(weights, weights_only=False)
    assert marker.exists(), "the file is armed: a plain unpickle runs it"


@pytest.mark.parametrize("form", PICKLE_FORMS)
def test_pickled_code_in_text_weights_never_runs(tmp_path, image_folder, capsys, unsafe_torch_default, form):
    marker = tmp_path / "UNPICKLED"
    text = tmp_path / "text"
    saved_bert(text)
    (text / "model.safetensors").unlink()
    armed_checkpoint(text / "pytorch_model.bin", marker, form)
    image = next(image_folder.rglob("*.png"))
    argv = ["label", str(image), "--labels", "红色,蓝色", "--model", "test-tiny", "--text-weights", str(text)]
    assert_refused_unsafe(capsys, argv, text / "pytorch_model.bin", "model.safetensors")
    assert not marker.exists(), "loading the text weights ran pickled code"


def test_safe_formats_of_the_same_weights_load_alike(tmp_path):
    """safetensors, torch.save (zip and legacy) and a wrapped {"state_dict": {"module.…"}} all load, to the same model."""
    torch.manual_seed(5)
    state = open_clip.create_model("tusou-tiny-vit").state_dict()
    save_file(state, tmp_path / "image.safetensors")
    torch.save(state, tmp_path / "image.bin")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "wrapped.pt")
    prints = {name: load_model("test-tiny", device="cpu", image_weights=tmp_path / name).fingerprint()
              for name in ("image.safetensors", "image.bin", "legacy.pt", "wrapped.pt")}
    assert len(set(prints.values())) == 1 and prints["image.bin"] != load_model("test-tiny", device="cpu").fingerprint()

    text = tmp_path / "text"
    reference = saved_bert(text)
    torch.save(reference.state_dict(), text / "pytorch_model.bin")
    (text / "model.safetensors").unlink()
    model = load_text_tower(get_entry("test-tiny"), pretrained=True, text_weights=text).bert
    ids = torch.tensor([[101, 300, 400, 102]])
    with torch.no_grad():
        np.testing.assert_allclose(model(ids)[1].numpy(), reference(ids)[1].numpy(), atol=1e-6)


@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_damaged_image_weights_are_one_line(tmp_path, damage):
    torch.manual_seed(5)
    weights = tmp_path / "image.bin"
    torch.save(open_clip.create_model("tusou-tiny-vit").state_dict(), weights)
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "text": b"not a checkpoint\n"}[damage])
    with pytest.raises(TusouError, match="cannot load image weights") as info:
        load_model("test-tiny", device="cpu", image_weights=weights).image_fingerprint()
    assert "\n" not in str(info.value)


def test_weights_are_reported_present_once_both_towers_are_in_the_cache(tmp_path, hub_cache):
    """`tusou models` reads the cache's layout itself (no download code imported): it must agree
    with what huggingface_hub finds there."""
    from huggingface_hub import try_to_load_from_cache

    from retrieval.models.families import OPEN_CLIP_WEIGHT_FILES, open_clip_checkpoint, weight_sources

    entry = get_entry("taiyi-clip-l14")
    assert weight_sources(entry)["present"] is False
    saved_bert(tmp_path / "bert")
    put_in_cache(hub_cache, entry.text.hub_id, tmp_path / "bert")
    assert weight_sources(entry)["present"] is False, "the image tower's checkpoint is still missing"
    repo, names = open_clip_checkpoint(entry.image.hub)
    assert names == OPEN_CLIP_WEIGHT_FILES
    (tmp_path / "image").mkdir()
    (tmp_path / "image" / names[1]).write_bytes(b"weights")
    put_in_cache(hub_cache, repo, tmp_path / "image")
    assert isinstance(try_to_load_from_cache(repo, names[1], cache_dir=hub_cache), str)
    assert weight_sources(entry)["present"] is True
