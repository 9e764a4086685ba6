"""The real loading path: the Hugging Face cache is honoured, and missing weights fail fast."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants

from retrieval import TusouError
from retrieval.image_tower import checkpoint
from retrieval.registry import get_entry
from retrieval.text_tower import load_text_tower
from tests.test_encoders import QUERIES, saved_bert

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def put_in_cache(cache: Path, repo: str, source: Path) -> Path:
    """Lay files out as huggingface_hub's cache does: models--org--name/{refs/main, snapshots/<commit>/}."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / COMMIT
    shutil.copytree(source, snapshot) if source.is_dir() else (snapshot.mkdir(parents=True), shutil.copy(source, snapshot))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_taiyi_text_tower_loads_from_the_hf_cache(tmp_path, hub_cache):
    entry = get_entry("taiyi-clip-l14")
    reference = saved_bert(tmp_path / "bert")
    put_in_cache(hub_cache, entry.text.hub_id, tmp_path / "bert")
    tokenizer, model = load_text_tower(entry, pretrained=True, text_weights=None)
    ids = tokenizer(QUERIES, padding="max_length", truncation=True, max_length=77, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        np.testing.assert_allclose(model(ids)[1].numpy(), reference(ids)[1].numpy(), atol=1e-6)


def test_openai_vit_checkpoint_resolves_from_the_hf_cache_with_clip_preprocessing(tmp_path, hub_cache):
    weights = tmp_path / "open_clip_model.safetensors"
    weights.write_bytes(b"stand-in: only its path is resolved here")
    put_in_cache(hub_cache, "timm/vit_large_patch14_clip_224.openai", weights)
    path, preprocess = checkpoint(get_entry("taiyi-clip-l14"), image_weights=None)
    assert path.name == "open_clip_model.safetensors" and COMMIT in str(path)
    assert preprocess["interpolation"] == "bicubic" and preprocess["resize_mode"] == "shortest"
    assert preprocess["mean"] == pytest.approx((0.48145466, 0.4578275, 0.40821073))


def test_missing_weights_offline_name_the_fix(hub_cache):
    with pytest.raises(TusouError) as info:
        checkpoint(get_entry("taiyi-clip-l14"), image_weights=None)
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
