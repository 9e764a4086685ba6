"""Distilled students: what they keep of their teacher, and how much faster a query runs.

1. With the `demo` model as the teacher (the only trained teacher on this machine): students of two
   or three sizes distilled on the synthetic captions, then measured on the demo's held-out test
   split as train.demo measures the demo itself (text→image R@1/5/10, zero-shot colour and shape),
   against the teacher in the same run; the loss (cosine, MSE, both) compared at one size.
2. At real size, with random weights (a query's time does not depend on the values): UER's
   miniatures against Taiyi's BERT-base text tower, one query at 77 tokens (Taiyi pads every query
   to 77), in float32 and bfloat16; and the student at the query's own length, as it runs.

    python -m bench.distill [--steps 2000] [--skip-demo] [--skip-real]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.report import machine, table
from retrieval.models.footprint import text_flops
from retrieval.models.model import EmbeddingModel, load_model
from retrieval.models.registry import get_entry, student_name
from train.demo import measure
from train.distill import DistillConfig, distill

TEXTS = ["synthetic:64000"]
DEMO_SIZES = [(1, 64), (2, 64), (2, 128)]
LOSS_SIZE = (2, 64)
REAL_SIZES = [(2, 256), (4, 256), (4, 512), (6, 512), (4, 768)]
QUERY = "一只小狗在草地上奔跑"
LONG = "一只棕色的小狗和一个穿红色衣服的小女孩在公园的草地上奔跑，远处有高楼、湖水和几棵开满白花的树。" * 3
RUNS = 15


def demo_rows(steps: int, work: Path) -> tuple[list[list[object]], list[list[object]]]:
    """The students of `demo` against it: one row per size (cosine loss), and one per loss at LOSS_SIZE."""
    teacher = load_model("demo", device="cpu")
    base = measure(teacher)
    flops = text_flops(teacher.entry)
    sizes, losses = [_row("demo (teacher)", base, base, 1.0, None)], []
    for layers, hidden in DEMO_SIZES:
        for loss in ("cosine", "mse", "both") if (layers, hidden) == LOSS_SIZE else ("cosine",):
            out = work / f"L{layers}-H{hidden}-{loss}"
            log = distill(DistillConfig(teacher="demo", student=f"L{layers}-H{hidden}", texts=TEXTS, out=out, steps=steps,
                                        batch_size=128, lr=1e-3, random=True, device="cpu", checkpoint_every=steps, loss=loss))
            student = load_model(str(out), device="cpu")
            row = _row(f"L{layers}-H{hidden}", measure(student), base, text_flops(student.entry) / flops, log[-1]["held_out_cosine"])
            if loss == "cosine":
                sizes.append(row)
            if (layers, hidden) == LOSS_SIZE:
                losses.append([loss, *row[1:]])
    return sizes, losses


def _row(name: str, figures: dict, base: dict, share: float, cosine: float | None) -> list[object]:
    r5 = figures["text_to_image_R@5"]
    return [name, f"{share:.1%}", *(f"{figures[f'text_to_image_R@{k}']:.3f}" for k in (1, 5, 10)), f"{r5 / base['text_to_image_R@5']:.1%}",
            f"{figures['zero_shot_colour_accuracy']:.3f}", f"{figures['zero_shot_shape_accuracy']:.3f}", "—" if cosine is None else f"{cosine:.4f}"]


def real_rows() -> list[list[object]]:
    """ms per query of Taiyi's text tower and of each student, at 77 tokens and (students) at the query's own length."""
    teacher = _valued(load_model("taiyi-clip-l14", device="cpu", pretrained=False))
    flops = text_flops(teacher.entry)
    times = {dtype: _ms(teacher.with_dtype(dtype), LONG) for dtype in (torch.float32, torch.bfloat16)}
    rows = [["taiyi-clip-l14 (BERT-base)", "102M", "100%", f"{times[torch.float32]:.1f}", "1.0×", f"{times[torch.bfloat16]:.1f}", "—", "—"]]
    for layers, hidden in REAL_SIZES:
        name = student_name("taiyi-clip-l14", layers, hidden)
        student = _valued(load_model(name, device="cpu", pretrained=False))
        fp32, bf16, short = _ms(student, LONG), _ms(student.with_dtype(torch.bfloat16), LONG), _ms(student, QUERY)
        rows.append([f"L{layers}-H{hidden}", f"{get_entry(name).parameters.text / 1e6:.0f}M", f"{text_flops(student.entry) / flops:.1%}",
                     f"{fp32:.1f}", f"{times[torch.float32] / fp32:.1f}×", f"{bf16:.1f}", f"{short:.2f}", f"{times[torch.float32] / short:.0f}×"])
    return rows


def _valued(model: EmbeddingModel) -> EmbeddingModel:
    """Random values in the text tower (an uninitialised tensor may hold denormals, which run slower)."""
    with torch.no_grad():
        for parameter in model.text_model.parameters():
            parameter.normal_(0.0, 0.02)
    return model


def _ms(model: EmbeddingModel, text: str) -> float:
    model.encode_texts([text])
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        model.encode_texts([text])
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-real", action="store_true")
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    if not args.skip_demo:
        with tempfile.TemporaryDirectory() as work:
            sizes, losses = demo_rows(args.steps, Path(work))
        headers = ["student", "FLOPs", "R@1", "R@5", "R@10", "R@5 kept", "colour", "shape", "held-out cos"]
        print(table(f"Students of demo, {args.steps} steps of 128 synthetic captions (cosine loss), held-out test split", headers, sizes,
                    ["FLOPs: of a text query against the teacher's at its 32 tokens. Zero-shot: accuracy on the single-shape images."]))
        print(table(f"The loss, at L{LOSS_SIZE[0]}-H{LOSS_SIZE[1]}", ["loss", *headers[1:]], losses))
    if not args.skip_real:
        print(table("A text query at real size (random weights): UER miniatures against Taiyi's BERT-base, one query",
                    ["text tower", "params", "FLOPs", "fp32 ms (77 tok)", "speed-up", "bf16 ms (77 tok)", "fp32 ms (own length)", "speed-up"],
                    real_rows(), [f"77 tokens: a long query truncated there, as Taiyi pads every query; own length: {QUERY!r}, "
                                  f"which a student runs unpadded. Median of {RUNS} after a warm-up."]))


if __name__ == "__main__":
    main()
