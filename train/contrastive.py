"""Contrastive (CLIP, symmetric InfoNCE) training of a text tower against an image tower.

Works for any registry entry: with `freeze_image` only the text tower learns, which is how
Taiyi-CLIP was made (its BERT trained against a frozen CLIP ViT). Checkpoints are written in
the formats the registry loads (`text/` for --text-weights, `image.safetensors` for
--image-weights) plus the optimiser state, so an interrupted run resumes exactly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from retrieval.datasets.cnclip_layout import split_paths
from retrieval.errors import TusouError
from retrieval.models.model import EmbeddingModel, load_model
from retrieval.models.registry import TextTower, get_entry
from train.checkpoints import adamw, checkpoint_dir, restore, save_checkpoint, saved_state, trainer_state, warmup_cosine
from train.pairs import PairBatch, PairData

MAX_LOGIT_SCALE = math.log(100.0)


@dataclass
class TrainConfig:
    model: str
    data: Path
    out: Path
    epochs: int = 4
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    freeze_image: bool = False
    pretrained: bool = False
    """Start from the entry's released weights (True) or from a random build of its architecture."""
    text_weights: str | None = None
    image_weights: str | None = None
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 200
    max_steps: int | None = None
    """Stop after this many optimiser steps (the schedule still spans all epochs); None: run them all."""


def contrastive_loss(text: torch.Tensor, image: torch.Tensor, scale: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE whose targets spread over every true match in the batch.

    With one correct image per text (real caption sets) this is exactly CLIP's loss; when a
    caption truly describes several images of the batch none of them is pushed away.
    """
    logits = scale * F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T
    targets = positives.float()
    text_to_image = F.cross_entropy(logits, targets / targets.sum(1, keepdim=True))
    image_to_text = F.cross_entropy(logits.T, targets.T / targets.T.sum(1, keepdim=True))
    return (text_to_image + image_to_text) / 2


def write_weights(model: EmbeddingModel) -> Callable[[Path], None]:
    """The checkpoint's weights in the formats the registry loads: `text/` and `image.safetensors`."""

    def write(folder: Path) -> None:
        model.text_model.bert.save_pretrained(folder / "text")
        model.text_model.tokenizer.save_pretrained(folder / "text")
        save_file({k: v.contiguous() for k, v in model.image_model.clip.state_dict().items()}, folder / "image.safetensors")

    return write


def train(cfg: TrainConfig, progress: bool = True) -> list[dict]:
    """Train, checkpointing every `checkpoint_every` steps; resumes from `out` when it holds a checkpoint."""
    out = Path(cfg.out)
    if not isinstance(get_entry(cfg.model).text, TextTower):
        raise TusouError(f"tusou train trains a BERT text tower against an open_clip image tower; {cfg.model!r} is another family")
    state = saved_state(out, _config_dict(cfg))
    torch.manual_seed(cfg.seed)
    model = load_model(
        cfg.model,
        device=cfg.device,
        pretrained=cfg.pretrained,
        text_weights=checkpoint_dir(out) / "text" if state else cfg.text_weights,
        image_weights=checkpoint_dir(out) / "image.safetensors" if state else cfg.image_weights,
    )
    data = PairData(cfg.data, "train", model.preprocess, model.image_size)
    steps_per_epoch = len(data) // cfg.batch_size
    if steps_per_epoch == 0:
        raise TusouError(f"{split_paths(cfg.data, 'train')[1]} has {len(data)} captions, fewer than one batch of {cfg.batch_size}")
    planned = cfg.epochs * steps_per_epoch
    total = planned if cfg.max_steps is None else min(cfg.max_steps, planned)
    params, optimizer, schedule = _optimizer(model, cfg, planned)
    step, log = 0, []
    if state is not None:
        step, log = restore(state, optimizer, schedule)
    model.text_model.train()
    model.image_model.train(not cfg.freeze_image)
    order: list[tuple[int, int]] = []
    with tqdm(total=total, initial=step, desc="training", unit=" step", disable=not progress) as bar:
        while step < total:
            epoch, index = divmod(step, steps_per_epoch)
            if index == 0 or not order:
                order = data.epoch_order(cfg.seed, epoch)
            loss = _step(model, data.batch(order[index * cfg.batch_size : (index + 1) * cfg.batch_size]), params, optimizer, schedule)
            step += 1
            log.append({"step": step, "epoch": epoch, "loss": round(loss, 5), "lr": schedule.get_last_lr()[0]})
            bar.set_postfix(loss=f"{loss:.3f}", epoch=epoch)
            bar.update()
            if step % cfg.checkpoint_every == 0 or step == total:
                save_checkpoint(out, write_weights(model), trainer_state(optimizer, schedule, step, log, _config_dict(cfg)))
    model.text_model.eval()
    model.image_model.eval()
    return log


def _optimizer(model: EmbeddingModel, cfg: TrainConfig, planned: int) -> tuple[list, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over the trained parameters (no weight decay on biases and norms), warm-up then cosine."""
    image_params = list(model.image_model.parameters())
    for p in image_params:
        p.requires_grad_(not cfg.freeze_image)
    params = list(model.text_model.parameters()) + ([] if cfg.freeze_image else image_params)
    optimizer = adamw(params, cfg.lr, cfg.weight_decay)
    return params, optimizer, warmup_cosine(optimizer, cfg.warmup_steps, planned)


def _step(model: EmbeddingModel, batch: PairBatch, params: list, optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler) -> float:
    """One optimisation step on a batch of pairs; returns its loss."""
    with torch.autocast("cuda", dtype=torch.float16, enabled=model.device.type == "cuda"):
        text = model.text_features(batch.texts)
        image = model.image_model(batch.pixels.to(model.device))
        loss = contrastive_loss(text.float(), image.float(), model.image_model.clip.logit_scale.exp(), batch.positives.to(model.device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    schedule.step()
    with torch.no_grad():
        model.image_model.clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return loss.item()


def _config_dict(cfg: TrainConfig) -> str:
    """The settings that shape the result (not where it runs or how often it saves)."""
    fields = asdict(cfg)
    for key in ("out", "device", "checkpoint_every", "data", "max_steps"):
        fields.pop(key)
    return json.dumps(fields, sort_keys=True, default=str)
