"""Loading an open_clip image tower and its eval transform."""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import open_clip
import safetensors.torch
import torch
from open_clip.convert import convert_state_dict
from open_clip.model import (
    convert_to_custom_text_state_dict,
    resize_pos_embed,
    resize_text_pos_embed,
)
from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

from retrieval.models import hub
from retrieval.errors import TusouError
from retrieval.models.registry import PACKAGE_ASSETS, ModelEntry
from retrieval.models.towers import ImageEncoder

open_clip.add_model_config(PACKAGE_ASSETS / "open_clip")

PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def hub_checkpoint(arch: str, pretrained: str) -> tuple[str, list[str]]:
    """The hub repo and candidate file names of an open_clip pretrained tag, as open_clip names them."""
    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not cfg.get("hf_hub"):
        raise TusouError(f"open_clip has no hub weights for {arch} / {pretrained}")
    repo, filename = os.path.split(cfg["hf_hub"].rstrip("/") + "/")
    if filename:
        return repo, [filename]
    return repo, [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]


def pretrained_checkpoint(name: str, arch: str, pretrained: str) -> tuple[Path, dict]:
    """An open_clip pretrained tag's checkpoint file (HF cache, else download) and the
    preprocessing its weights expect."""
    repo, names = hub_checkpoint(arch, pretrained)
    fix = f"model {name!r} needs it; use --model demo, pass --image-weights FILE (an open_clip checkpoint of {arch}), or go online once"
    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    return hub.file(repo, names, fix=fix), {k: cfg[k] for k in PREPROCESS_KEYS if k in cfg}


def local_checkpoint(image_weights: str | Path) -> Path:
    path = Path(image_weights)
    if not path.is_file():
        raise TusouError(f"--image-weights {path}: no such file (expected an open_clip checkpoint)")
    return path


def checkpoint(entry: ModelEntry, image_weights: str | Path | None) -> tuple[Path | None, dict]:
    """The checkpoint file to load (None: random) and the preprocessing its weights expect."""
    if image_weights is not None:
        return local_checkpoint(image_weights), {}
    if entry.image.package_file is not None:
        return PACKAGE_ASSETS / entry.image.package_file, {}
    if entry.image.pretrained is None:
        return None, {}
    return pretrained_checkpoint(entry.name, entry.image.arch, entry.image.pretrained)


SAFETENSORS_FIX = "re-save it as .safetensors (safetensors.torch.save_file(state_dict, PATH)) from a source you trust"


def refused_by_unpickler(error: BaseException) -> bool:
    """Whether torch's weights-only unpickler refused a pickle that wants more than tensors (a global,
    a call, an object), or one crafted to make it fail otherwise: how open_clip's unsafe retry is reached.

    A truncated file or one that is no pickle at all is not this, but damage.
    """
    if isinstance(error, pickle.UnpicklingError):
        return re.search(r"GLOBAL|global|reduce|Can only|persistent_load", str(error)) is not None
    if not isinstance(error, (TypeError, AttributeError, ValueError)):
        return False
    frame = error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_filename.endswith("_weights_only_unpickler.py"):
            return True
        frame = frame.tb_next
    return False


def damage(error: BaseException) -> str:
    """Why an intact-looking weights file did not load, in a few words (never torch's advice to
    retry with weights_only=False)."""
    if isinstance(error, EOFError):
        return "the file is empty or cut short"
    if isinstance(error, pickle.UnpicklingError):
        return "not a torch checkpoint"
    return _first_line(error).split(". ")[0]


def unsafe_pickle(what: str, path: Path, error: BaseException, fix: str = SAFETENSORS_FIX) -> TusouError:
    """The one line for a weights file that torch's weights-only unpickler refused."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    inside = f"it would import {found.group(1)}, not only tensors" if found else "its pickle does not rebuild plain tensors"
    return TusouError(f"{what} {path} cannot be loaded safely ({inside}; tusou never unpickles code): {fix}")


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an open_clip checkpoint, never unpickling anything but tensors.

    tusou reads the file itself instead of handing the path to open_clip: open_clip 3.3's
    `load_state_dict` retries `torch.load` *without* weights_only when the safe load raises
    TypeError, and with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD set that retry unpickles anything
    (a crafted file runs code). Here: safetensors, or torch.load(weights_only=True), no retry.
    """
    try:
        if path.suffix == ".safetensors":
            checkpoint = safetensors.torch.load_file(path)
        else:
            # mmap: a zip checkpoint's tensors are mapped, not copied (ViT-L is 1.7 GB)
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # noqa: BLE001 - truncated, not a checkpoint, a crafted pickle: all one line
        if refused_by_unpickler(exc):
            raise unsafe_pickle("image weights", path, exc) from None
        raise TusouError(f"cannot load image weights {path}: {damage(exc)}") from None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not checkpoint or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise TusouError(f"cannot load image weights {path}: not a state dict of tensors (expected an open_clip checkpoint)")
    if all(str(key).startswith("module.") for key in checkpoint):  # saved from DistributedDataParallel
        checkpoint = {key[len("module.") :]: value for key, value in checkpoint.items()}
    return checkpoint


def load_state_dict(model: open_clip.CLIP, state_dict: dict[str, torch.Tensor]) -> None:
    """What open_clip.load_checkpoint does after reading the file, on tensors read safely."""
    state_dict = convert_state_dict(model, state_dict)
    if "positional_embedding" in state_dict and not hasattr(model, "positional_embedding"):
        state_dict = convert_to_custom_text_state_dict(state_dict)
    for key in ("logit_scale", "logit_bias"):
        if key in state_dict and getattr(model, key, None) is not None and getattr(model, key).ndim != state_dict[key].ndim:
            state_dict[key] = state_dict[key].reshape(getattr(model, key).shape)
    if "logit_bias" not in state_dict and getattr(model, "logit_bias", None) is not None:
        state_dict["logit_bias"] = torch.zeros_like(model.logit_bias)
    state_dict.pop("text.transformer.embeddings.position_ids", None)  # transformers >= 4.31 has none
    resize_pos_embed(state_dict, model)
    resize_text_pos_embed(state_dict, model)
    model.load_state_dict(state_dict, strict=True)


class _NoRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextmanager
def _quiet_about_random_init(loading: bool) -> Iterator[None]:
    """open_clip warns that a model made with pretrained=None is random; not when tusou loads its weights next."""
    quiet = _NoRandomInitWarning()
    if loading:
        logging.getLogger().addFilter(quiet)  # open_clip logs through the root logger
    try:
        yield
    finally:
        logging.getLogger().removeFilter(quiet)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class OpenClipImage(ImageEncoder):
    """The image side of an open_clip model (the whole model is kept: training and
    logit_scale use it)."""

    def __init__(self, clip: torch.nn.Module, preprocess: Callable):
        super().__init__()
        self.clip, self.preprocess = clip, preprocess

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(pixels)

    @property
    def image_size(self) -> int:
        size = self.clip.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def logit_scale(self) -> float:
        return float(self.clip.logit_scale.detach().exp().clamp(max=100.0))

    def weights(self) -> dict[str, torch.Tensor]:
        return self.clip.visual.state_dict()


def create_open_clip(
    arch: str, seed: int, path: Path | None, preprocess_cfg: dict, **model_kwargs: object
) -> tuple[torch.nn.Module, Callable]:
    """open_clip's `arch` with the weights in `path` (read safely), or random from `seed`."""
    state_dict = read_checkpoint(path) if path is not None else None
    with torch.random.fork_rng(devices=[]), _quiet_about_random_init(state_dict is not None):
        torch.manual_seed(seed)
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch,
            pretrained=None,  # the weights are loaded below, from tensors read safely
            **{f"image_{key}": value for key, value in preprocess_cfg.items()},
            **model_kwargs,
        )
    if state_dict is not None:
        try:
            load_state_dict(model, state_dict)
        except Exception as exc:  # noqa: BLE001 - missing keys, wrong shapes: the file is for another model
            raise TusouError(f"cannot load image weights {path} into {arch}: {_first_line(exc)}") from None
    return model.eval(), preprocess


def load_image_tower(entry: ModelEntry, pretrained: bool, image_weights: str | Path | None) -> OpenClipImage:
    path, preprocess_cfg = checkpoint(entry, image_weights) if pretrained or image_weights is not None else (None, {})
    return OpenClipImage(*create_open_clip(entry.image.arch, entry.seed, path, preprocess_cfg))
