"""A training run's checkpoint: written whole beside the last one, then swapped in, so a run killed at any
point resumes from a complete checkpoint; and the optimiser's schedule both trainers share."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from retrieval.errors import TusouError

TRAINER_STATE = "trainer.pt"


def checkpoint_dir(out: Path) -> Path:
    return out / "checkpoint"


def save_checkpoint(out: Path, write: Callable[[Path], None], trainer_state: dict) -> Path:
    """`write` the weights into a fresh folder with the trainer's state, then swap it in for the old one."""
    final, fresh, stale = checkpoint_dir(out), out / "checkpoint.new", out / "checkpoint.old"
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    write(fresh)
    torch.save(trainer_state, fresh / TRAINER_STATE)
    if final.exists():
        final.rename(stale)
    fresh.rename(final)
    shutil.rmtree(stale, ignore_errors=True)
    return final


def saved_state(out: Path, settings: str) -> dict | None:
    """The trainer state of the run in `out` to resume (None for a new run); a run with other
    `settings` (what shapes its result) is refused. A kill between the two renames of a swap left the
    last complete checkpoint as checkpoint.old: it is taken back."""
    resume = checkpoint_dir(out) / TRAINER_STATE
    if not resume.exists() and (out / "checkpoint.old" / TRAINER_STATE).exists():
        (out / "checkpoint.old").rename(checkpoint_dir(out))
    state = torch.load(resume, weights_only=True) if resume.exists() else None
    if state is not None and state["config"] != settings:
        raise TusouError(f"{out} holds a run with other settings: resume with the same ones or choose another --out")
    return state


def trainer_state(optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler, step: int, log: list[dict],
                  settings: str) -> dict:
    """What a resume needs to go on exactly: the optimiser, the schedule, torch's random state, the step and the log."""
    return {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "rng": torch.get_rng_state(),
            "step": step, "log": json.dumps(log), "config": settings}


def restore(state: dict, optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler) -> tuple[int, list[dict]]:
    """Put a saved state back; returns its step and log."""
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["rng"])
    return state["step"], json.loads(state["log"])


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup` steps, then a cosine decay to zero at `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def adamw(parameters: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases and norms."""
    groups = [{"params": [p for p in parameters if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)
