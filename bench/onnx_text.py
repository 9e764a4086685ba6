"""Text towers in ONNX Runtime (float32 and int8 weights) against torch (float32 and bfloat16).

Milliseconds a text query (one at a time) and a batch of 16, through the whole text path
(`encode_texts`: tokenize, tower, normalise), on `demo` (its own 32 tokens) and on taiyi-clip-l14's
BERT-base at real size with random weights (77 tokens), every runtime measured round-robin in the
same run; cosines are the lowest over the queries against torch float32. Then what int8 keeps of the
demo model's quality: text→image R@1/5/10 on its held-out synthetic test split (train.demo.measure).

    python -m bench.onnx_text [--queries 40] [--batches 8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench.query_latency import chinese_queries
from bench.report import machine, table
from retrieval.models.footprint import text_to_time
from retrieval.models.model import EmbeddingModel, load_model
from retrieval.models.onnx_export import export_text_tower
from retrieval.models.onnx_text import OnnxText
from train.demo import measure

BATCH = 16


def runtimes(model: EmbeddingModel, folder: Path) -> dict[str, EmbeddingModel]:
    """The model in each runtime: torch float32 (the baseline) and bfloat16, ONNX float32 and int8."""
    found = {"torch fp32": model, "torch bf16": model.with_dtype(torch.bfloat16)}
    for int8, label in ((False, "onnx fp32"), (True, "onnx int8")):
        report = export_text_tower(model, folder / f"{model.name}-{label.replace(' ', '-')}.onnx", int8)
        found[label] = model.with_text_tower(OnnxText.open(report.path, model))
        print(f"  {label}: exported and checked, lowest cosine {report.lowest_cosine:.5f}, {report.bytes / 2**20:.1f} MB", flush=True)
    return found


def round_robin(models: dict[str, EmbeddingModel], inputs: list[list[str]]) -> dict[str, float]:
    """Median ms of `encode_texts` on each input, every runtime in turn on each (after a warm-up of each)."""
    times: dict[str, list[float]] = {label: [] for label in models}
    for label, model in models.items():
        model.encode_texts(inputs[0])
    for texts in inputs:
        for label, model in models.items():
            times[label].append(_ms(lambda: model.encode_texts(texts)))
    return {label: statistics.median(values) for label, values in times.items()}


def _ms(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return 1000 * (time.perf_counter() - start)


def lowest_cosines(models: dict[str, EmbeddingModel], queries: list[str]) -> dict[str, float]:
    """Each runtime's lowest cosine to torch float32 over `queries`, each encoded alone."""
    baseline = np.concatenate([models["torch fp32"].encode_texts([q]) for q in queries])
    return {label: float(np.min(np.sum(baseline * np.concatenate([m.encode_texts([q]) for q in queries]), axis=1)))
            for label, m in models.items()}


def latency_rows(title: str, models: dict[str, EmbeddingModel], queries: list[str], batches: int) -> list[list[object]]:
    single = round_robin(models, [[q] for q in queries])
    grouped = round_robin(models, [[queries[(i * BATCH + j) % len(queries)] for j in range(BATCH)] for i in range(batches)])
    cosines = lowest_cosines(models, queries)
    base_single, base_batch = single["torch fp32"], grouped["torch fp32"]
    return [[title, label, single[label], base_single / single[label], grouped[label], base_batch / grouped[label], f"{cosines[label]:.5f}"]
            for label in models]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=40, help="distinct queries, each timed alone")
    parser.add_argument("--batches", type=int, default=8, help="batches of 16 queries timed")
    args = parser.parse_args()
    queries = chinese_queries(max(args.queries, BATCH))
    print(machine(), flush=True)
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as folder:
        demo = load_model("demo", device="cpu")
        for title, model in (("demo (32 tokens)", demo), ("taiyi-clip-l14 BERT-base, random (77 tokens)", None)):
            print(f"{title}:", flush=True)
            model = model or text_to_time("taiyi-clip-l14")
            models = runtimes(model, Path(folder))
            rows += latency_rows(title, models, queries, args.batches)
            if model is demo:
                retention = {label: measure(models[label]) for label in ("torch fp32", "onnx int8")}
            del models, model
    print()
    print(table("Text tower: ms per query, torch and ONNX Runtime",
                ["model", "runtime", "1 query ms", "speed-up", f"batch of {BATCH} ms", "speed-up", "lowest cosine"], rows,
                [f"Medians, {args.queries} single queries and {args.batches} batches, round-robin; speed-up against torch fp32; "
                 "cosine: the lowest against torch fp32 over the queries. " + machine() + "."]))
    fp32, int8 = retention["torch fp32"], retention["onnx int8"]
    keys = [f"text_to_image_R@{k}" for k in (1, 5, 10)]
    print(table("int8 retention on the demo model (held-out synthetic test split, 1,000 captions)",
                ["measure", "torch fp32", "onnx int8", "retained"],
                [[key.replace("text_to_image_", "text→image "), fp32[key], int8[key], f"{int8[key] / fp32[key]:.4f}"] for key in keys]))


if __name__ == "__main__":
    main()
