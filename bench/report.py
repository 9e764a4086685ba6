"""Timing and tables shared by the benchmarks: medians of repeated calls, ratios to a baseline."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np


def timed(call: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def latencies(call: Callable[[object], object], inputs: Iterable[object], warmup: Sequence[object] = ()) -> np.ndarray:
    """Seconds per call of `call(x)` for each input, after untimed warm-up calls."""
    for x in warmup:
        call(x)
    return np.array([timed(lambda x=x: call(x))[0] for x in inputs])


SIMD_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "VNNI", "avx512_bf16": "BF16", "amx_tile": "AMX"}
"""The /proc/cpuinfo flags that change how fast FAISS and torch run, by the names the docs use."""


def cpu_model() -> str:
    """The CPU's model name and the SIMD features it has (every figure says which CPU it came from)."""
    fields = dict(line.split(":", 1) for line in _cpuinfo().splitlines() if ":" in line)
    name = fields.get("model name\t", "").strip() or platform.processor() or platform.machine()
    flags = set(fields.get("flags\t\t", "").split())
    features = [label for flag, label in SIMD_FLAGS.items() if flag in flags]
    return f"{name} ({'/'.join(features) or 'no AVX2'})"


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return handle.read().split("\n\n")[0]
    except OSError:
        return ""


def machine() -> str:
    import os

    import torch

    return f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]], notes: Sequence[str] = ()) -> str:
    """A Markdown table (what docs/performance.md shows), printed as the benchmark's result."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    out = [f"### {title}", "", line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)]
    return "\n".join([*out, "", *notes]).rstrip() + "\n"


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
