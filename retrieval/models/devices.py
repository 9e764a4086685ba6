"""Choosing the torch device and the precision that goes with it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from retrieval.errors import TusouError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` takes CUDA when torch sees it; an explicit device that is not there is an error."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError:
        raise TusouError(f"unknown device {name!r}: use auto, cpu or cuda") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise TusouError(f"device {name!r} asked for, but torch sees no CUDA device: use --device cpu or auto")
    if resolved.type not in ("cpu", "cuda"):
        raise TusouError(f"unsupported device {name!r}: use auto, cpu or cuda")
    return resolved


PRECISIONS = ("auto", "fp32", "bf16")


BF16_MIN_PARAMETERS = 20_000_000
"""A text tower smaller than this stays float32 under `auto`: converting to and from bfloat16 costs
more than its few small matrix products save (the 0.8M-parameter `demo` tower ran 3–5× slower in
bfloat16 on a Zen 4 EPYC, BERT-base 2.3× faster)."""


def compute_dtype(device: torch.device, precision: str = "auto", parameters: int | None = None) -> torch.dtype:
    """The dtype both towers run in for queries and index builds.

    `auto` takes bfloat16 on CPUs with bfloat16 matrix instructions: AMX tiles (Intel Sapphire
    Rapids on), where BERT runs ~2.4× and ViT-L ~6× faster than in float32, or AVX-512 BF16 (AMD
    Zen 4, Intel Cooper Lake), ~2× for BERT; vectors stay at cosine ≥ 0.9999 to float32 ones
    (bench/query_latency.py measures both). Elsewhere bfloat16 is emulated, slower than float32;
    and a model whose text tower has fewer than BF16_MIN_PARAMETERS `parameters` stays float32.
    On CUDA the towers already run under fp16 autocast, so weights stay float32. Evaluation keeps
    float32, to compare with published figures.
    """
    if precision not in PRECISIONS:
        raise TusouError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    if device.type == "cuda" or precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    large = parameters is None or parameters >= BF16_MIN_PARAMETERS
    return torch.bfloat16 if large and has_bf16_instructions() else torch.float32


def has_bf16_instructions() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AMX tiles or AVX-512 BF16), as torch sees it."""
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


@contextlib.contextmanager
def inference(device: torch.device) -> Iterator[None]:
    """No autograd, and fp16 autocast on CUDA (the CPU keeps fp32, which is faster there)."""
    with torch.inference_mode():
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                yield
        else:
            yield
