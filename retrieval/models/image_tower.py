"""An open_clip image tower and its eval transform: which checkpoint, read safely, loaded as open_clip would."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import open_clip
import torch
from open_clip.convert import convert_state_dict
from open_clip.model import (
    convert_to_custom_text_state_dict,
    resize_pos_embed,
    resize_text_pos_embed,
)

from retrieval.errors import TusouError
from retrieval.models import hub
from retrieval.models.checkpoints import first_line, read_checkpoint
from retrieval.models.families import WeightsPath, open_clip_checkpoint
from retrieval.models.registry import PACKAGE_ASSETS, ImageTower, ModelEntry
from retrieval.models.towers import ImageEncoder, seeded, temperature

open_clip.add_model_config(PACKAGE_ASSETS / "open_clip")

PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def pretrained_checkpoint(name: str, spec: ImageTower) -> tuple[Path, dict]:
    """An open_clip pretrained tag's checkpoint file (HF cache, else download) and the
    preprocessing its weights expect."""
    repo, names = open_clip_checkpoint(spec.hub or "")
    fix = f"model {name!r} needs it; use --model demo, pass --image-weights FILE (an open_clip checkpoint of {spec.arch}), or go online once"
    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained)
    return hub.file(repo, names, fix=fix), {k: cfg[k] for k in PREPROCESS_KEYS if k in cfg}


def local_checkpoint(image_weights: str | Path) -> Path:
    """--image-weights FILE, checked to exist: cheap, so a loader checks it before any long step."""
    path = Path(image_weights)
    if not path.is_file():
        raise TusouError(f"--image-weights {path}: no such file (expected an open_clip checkpoint)")
    return path


def checkpoint(name: str, spec: ImageTower, image_weights: WeightsPath, pretrained: bool = True) -> tuple[Path | None, dict]:
    """The checkpoint file of model `name`'s open_clip tower (None: random) and the preprocessing
    its weights expect: --image-weights FILE, else (when `pretrained`) the package's or the tag's."""
    if image_weights is not None:
        return local_checkpoint(image_weights), {}
    if pretrained and spec.package_file is not None:
        return PACKAGE_ASSETS / spec.package_file, {}
    if pretrained and spec.pretrained is not None:
        return pretrained_checkpoint(name, spec)
    return None, {}


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
        return temperature(self.clip.logit_scale)

    def weights(self) -> dict[str, torch.Tensor]:
        return self.clip.visual.state_dict()


def create_open_clip(
    arch: str, seed: int, path: Path | None, preprocess_cfg: dict, **model_kwargs: object
) -> tuple[torch.nn.Module, Callable]:
    """open_clip's `arch` with the weights in `path` (read safely), or random from `seed`."""
    state_dict = read_checkpoint(path) if path is not None else None
    with seeded(seed), _quiet_about_random_init(state_dict is not None):
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
            raise TusouError(f"cannot load image weights {path} into {arch}: {first_line(exc)}") from None
    return model.eval(), preprocess


def load_image_tower(entry: ModelEntry, pretrained: bool, image_weights: WeightsPath) -> OpenClipImage:
    """The entry's open_clip image tower, from --image-weights FILE, the package or the hub, else at random."""
    path, preprocess_cfg = checkpoint(entry.name, entry.image, image_weights, pretrained)
    return OpenClipImage(*create_open_clip(entry.image.arch, entry.seed, path, preprocess_cfg))
