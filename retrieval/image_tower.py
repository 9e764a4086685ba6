"""Loading an open_clip image tower and its eval transform."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import open_clip
import torch
from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

from retrieval import hub
from retrieval.errors import TusouError
from retrieval.registry import PACKAGE_ASSETS, ModelEntry

open_clip.add_model_config(PACKAGE_ASSETS / "open_clip")

PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def hub_checkpoint(entry: ModelEntry) -> tuple[str, list[str]]:
    """The hub repo and candidate file names of an open_clip pretrained tag, as open_clip names them."""
    cfg = open_clip.get_pretrained_cfg(entry.image.arch, entry.image.pretrained or "")
    if not cfg.get("hf_hub"):
        raise TusouError(f"open_clip has no hub weights for {entry.image.arch} / {entry.image.pretrained}")
    repo, filename = os.path.split(cfg["hf_hub"].rstrip("/") + "/")
    if filename:
        return repo, [filename]
    return repo, [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]


def checkpoint(entry: ModelEntry, image_weights: str | Path | None) -> tuple[Path | None, dict]:
    """The checkpoint file to load (None: random) and the preprocessing its weights expect."""
    if image_weights is not None:
        path = Path(image_weights)
        if not path.is_file():
            raise TusouError(f"--image-weights {path}: no such file (expected an open_clip checkpoint)")
        return path, {}
    if entry.image.package_file is not None:
        return PACKAGE_ASSETS / entry.image.package_file, {}
    if entry.image.pretrained is None:
        return None, {}
    repo, names = hub_checkpoint(entry)
    fix = (
        f"model {entry.name!r} needs it; use --model demo, pass --image-weights FILE "
        f"(an open_clip checkpoint of {entry.image.arch}), or go online once"
    )
    cfg = open_clip.get_pretrained_cfg(entry.image.arch, entry.image.pretrained)
    return hub.file(repo, names, fix=fix), {k: cfg[k] for k in PREPROCESS_KEYS if k in cfg}


def load_image_tower(
    entry: ModelEntry, pretrained: bool, image_weights: str | Path | None
) -> tuple[open_clip.CLIP, Callable]:
    path, preprocess_cfg = checkpoint(entry, image_weights) if pretrained or image_weights is not None else (None, {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(entry.seed)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                entry.image.arch,
                pretrained=str(path) if path else None,
                **{f"image_{key}": value for key, value in preprocess_cfg.items()},
            )
        except Exception as exc:
            if path is None:
                raise
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TusouError(f"cannot load image weights {path} into {entry.image.arch}: {first_line}") from None
    return model.eval(), preprocess
