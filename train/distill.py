"""Distilling a small text tower from a teacher's (`tusou distill`): Multilingual-CLIP's teacher learning.

The student (retrieval.models.student) learns to reproduce the teacher's normalised text vectors
on text alone; the teacher's image tower and every image vector stay as they are, so the student
searches the teacher's indexes. The teacher's vectors are computed once and kept in the run's
folder; checkpoints are swapped in whole and a re-run resumes exactly (train.checkpoints).

The run's folder is the student: `--model DIR` loads `DIR/checkpoint/text` as the entry its
`student.json` names, beside the teacher's image tower.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from retrieval.errors import TusouError
from retrieval.models.devices import resolve_device
from retrieval.models.model import EmbeddingModel, load_model
from retrieval.models.registry import STUDENT_FILE, UER_HIDDEN, UER_LAYERS, ModelEntry, student_entry
from retrieval.models.student import StudentBert, student_text, uer_weights
from train.checkpoints import adamw, checkpoint_dir, restore, save_checkpoint, saved_state, trainer_state, warmup_cosine
from train.losses import LOSSES
from train.texts import read_texts

TEACHER_VECTORS = "teacher.npy"
ARCHITECTURE = re.compile(r"L-?(?P<layers>\d+)[-_]H-?(?P<hidden>\d+)")
UER_ID = re.compile(r"uer/chinese_roberta_L-(?P<layers>\d+)_H-(?P<hidden>\d+)")
HELD_OUT = 1000
"""At most this many texts are kept out of training, to measure how close the student comes (at most 2%)."""


@dataclass
class DistillConfig:
    teacher: str
    student: str
    """An architecture L<layers>-H<width>, a UER hub id, or a folder with a copy of a UER miniature."""
    texts: list[str]
    out: Path
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    loss: str = "cosine"
    random: bool = False
    """Start from the architecture at random (with the teacher's vocabulary) instead of UER's weights."""
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 200
    max_steps: int | None = None
    """Stop after this many steps (the schedule still spans `steps`); a re-run goes on from there."""


UNSHAPING = ("out", "device", "checkpoint_every", "texts", "max_steps")
"""Settings that do not shape the result (the texts count by their hash instead of their sources' names)."""


def distill_loss(kind: str, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The loss of `kind` (train.losses) between a batch of student and unit teacher vectors."""
    cosine = (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    squared = (student - teacher).pow(2).sum(-1).mean()
    return {"cosine": cosine, "mse": squared, "both": cosine + squared}[kind]


def resolve_student(cfg: DistillConfig) -> tuple[ModelEntry, Path | None, str]:
    """The student's entry, the folder its starting weights are in (None: at random), and that start in words."""
    folder = Path(cfg.student)
    if folder.is_dir():
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            layers, hidden = int(config["num_hidden_layers"]), int(config["hidden_size"])
        except (OSError, ValueError, KeyError, TypeError):
            raise TusouError(f"--student {folder}: not a transformers BERT folder (no readable config.json)") from None
        entry = student_entry(cfg.teacher, layers, hidden)
        return entry, (None if cfg.random else folder), "random" if cfg.random else str(folder.resolve())
    named = UER_ID.fullmatch(cfg.student) or ARCHITECTURE.fullmatch(cfg.student)
    if named is None:
        raise TusouError(f"--student {cfg.student}: name an architecture L<layers>-H<width> (UER's: L{UER_LAYERS[0]}..{UER_LAYERS[-1]}, "
                         f"H{UER_HIDDEN[0]}..{UER_HIDDEN[-1]}), a hub id uer/chinese_roberta_L-4_H-512, or a folder with a copy of one")
    entry = student_entry(cfg.teacher, int(named["layers"]), int(named["hidden"]))
    if cfg.random:
        return entry, None, "random"
    hub_id = entry.text.hub_id
    if hub_id is None:
        raise TusouError(f"--student {cfg.student}: UER published no miniature of that size (layers {', '.join(map(str, UER_LAYERS))}; "
                         f"widths {', '.join(map(str, UER_HIDDEN))}): add --random to start from the architecture at random")
    return entry, uer_weights(hub_id, entry.name), f"hub:{hub_id}"


def distill(cfg: DistillConfig, progress: bool = True) -> list[dict]:
    """Distil, checkpointing every `checkpoint_every` steps; resumes from `out` when it holds a checkpoint."""
    if cfg.loss not in LOSSES:
        raise TusouError(f"unknown loss {cfg.loss!r}: use {', '.join(LOSSES)}")
    out = Path(cfg.out)
    entry, start, started = resolve_student(cfg)
    texts = read_texts(cfg.texts)
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    settings = _settings(cfg, digest)
    state = saved_state(out, settings)
    teacher_vectors, fingerprints = _teacher_vectors(cfg, out, texts, digest, progress)
    _describe(out, entry, cfg, started, fingerprints, len(texts), digest)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    resumed = checkpoint_dir(out) / "text" if state else None
    student = student_text(entry, resumed or start, projection=resumed is not None).to(device)
    held, train_rows = _split(len(texts), cfg.seed)
    if len(train_rows) < cfg.batch_size:
        raise TusouError(f"--texts give {len(train_rows)} texts to train on (after {len(held)} held out), fewer than one batch of {cfg.batch_size}")
    parameters = list(student.parameters())
    optimizer = adamw(parameters, cfg.lr, cfg.weight_decay)
    schedule = warmup_cosine(optimizer, cfg.warmup_steps, cfg.steps)
    step, log = restore(state, optimizer, schedule) if state else (0, [])
    targets = torch.from_numpy(teacher_vectors)
    per_epoch = len(train_rows) // cfg.batch_size
    order: list[int] = []
    stop = cfg.steps if cfg.max_steps is None else min(cfg.max_steps, cfg.steps)
    with tqdm(total=stop, initial=step, desc="distilling", unit=" step", disable=not progress) as bar:
        while step < stop:
            epoch, index = divmod(step, per_epoch)
            if index == 0 or not order:
                order = _epoch_order(train_rows, cfg.seed, epoch)
            rows = order[index * cfg.batch_size : (index + 1) * cfg.batch_size]
            loss = _step(student, [texts[r] for r in rows], targets[rows].to(device), cfg.loss, parameters, optimizer, schedule)
            step += 1
            record = {"step": step, "loss": round(loss, 5), "lr": schedule.get_last_lr()[0]}
            if step % cfg.checkpoint_every == 0 or step == stop:
                record["held_out_cosine"] = round(held_out_cosine(student, [texts[r] for r in held], teacher_vectors[held]), 5)
                log.append(record)
                save_checkpoint(out, lambda folder: student.save(folder / "text"), trainer_state(optimizer, schedule, step, log, settings))
            else:
                log.append(record)
            bar.set_postfix(loss=f"{loss:.4f}", **({"cos": f"{record['held_out_cosine']:.4f}"} if "held_out_cosine" in record else {}))
            bar.update()
    return log


def held_out_cosine(student: StudentBert, texts: list[str], teacher: np.ndarray, batch_size: int = 256) -> float:
    """Mean cosine of the student's vectors to the teacher's on texts it did not train on."""
    was_training = student.training
    student.eval()
    vectors = []
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            inputs = {k: v.to(next(student.parameters()).device) for k, v in student.tokenize(texts[s : s + batch_size]).items()}
            vectors.append(F.normalize(student(**inputs).float(), dim=-1).cpu().numpy())
    student.train(was_training)
    return float(np.mean(np.sum(np.concatenate(vectors) * teacher, axis=1)))


def _step(student: StudentBert, texts: list[str], targets: torch.Tensor, kind: str, parameters: list,
          optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler) -> float:
    student.train()
    inputs = {key: value.to(targets.device) for key, value in student.tokenize(texts).items()}
    with torch.autocast("cuda", dtype=torch.float16, enabled=targets.device.type == "cuda"):
        loss = distill_loss(kind, student(**inputs).float(), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimizer.step()
    schedule.step()
    return loss.item()


def _teacher_vectors(cfg: DistillConfig, out: Path, texts: list[str], digest: str, progress: bool) -> tuple[np.ndarray, dict[str, str]]:
    """The teacher's unit vectors of `texts`, computed once and kept in `out` (keyed by the texts and the teacher's weights)."""
    cached, described = out / TEACHER_VECTORS, out / STUDENT_FILE
    if cached.is_file() and described.is_file():
        record = json.loads(described.read_text(encoding="utf-8"))
        vectors = np.load(cached, mmap_mode="r")
        same = record.get("teacher") == cfg.teacher and record.get("texts", {}).get("sha256") == digest
        if same and vectors.shape[0] == len(texts):
            return np.array(vectors), record["teacher_fingerprints"]
    teacher = load_model(cfg.teacher, device=cfg.device)
    fingerprints = {"text": teacher.text_fingerprint(), "image": teacher.image_fingerprint()}
    vectors = _encode(teacher, texts, progress)
    out.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(".partial.npy")
    np.save(partial, vectors)
    os.replace(partial, cached)
    return vectors, fingerprints


def _encode(teacher: EmbeddingModel, texts: list[str], progress: bool, chunk: int = 1024) -> np.ndarray:
    with tqdm(total=len(texts), desc="teacher vectors", unit=" text", disable=not progress) as bar:
        rows = []
        for s in range(0, len(texts), chunk):
            rows.append(teacher.encode_texts(texts[s : s + chunk], batch_size=256))
            bar.update(len(rows[-1]))
    return np.concatenate(rows)


def _describe(out: Path, entry: ModelEntry, cfg: DistillConfig, started: str, fingerprints: dict[str, str], count: int, digest: str) -> None:
    """The folder's student.json: what `--model DIR` opens, and what checks it against the teacher's indexes."""
    record = {"format": 1, "model": entry.name, "teacher": cfg.teacher, "teacher_fingerprints": fingerprints, "start": started,
              "loss": cfg.loss, "texts": {"count": count, "sha256": digest, "sources": cfg.texts}}
    fresh = out / (STUDENT_FILE + ".new")
    fresh.write_text(json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(fresh, out / STUDENT_FILE)


def _split(count: int, seed: int) -> tuple[list[int], list[int]]:
    """Held-out and training rows of `count` texts, by seed."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    held = min(HELD_OUT, max(1, count // 50))
    return sorted(order[:held]), order[held:]


def _epoch_order(rows: list[int], seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch + 1)
    return [rows[i] for i in torch.randperm(len(rows), generator=generator).tolist()]


def _settings(cfg: DistillConfig, digest: str) -> str:
    """What shapes the result (not where it runs or how often it saves), with the texts by their hash."""
    fields = {key: value for key, value in asdict(cfg).items() if key not in UNSHAPING}
    return json.dumps({**fields, "texts": digest}, sort_keys=True, default=str)
