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


@contextlib.contextmanager
def inference(device: torch.device) -> Iterator[None]:
    """No autograd, and fp16 autocast on CUDA (the CPU keeps fp32, which is faster there)."""
    with torch.inference_mode():
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                yield
        else:
            yield
