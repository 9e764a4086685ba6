"""Which runtime runs a model's text queries: torch (the default), or ONNX Runtime from an export;
and what of that is checked before any model loads.

An export comes from `--onnx FILE` (made by `tusou export`; its own int8 flag says which ONNX
runtime it is), or else from tusou's cache, `~/.cache/tusou/onnx/<model>-<text fingerprint>.onnx`
(`-int8.onnx` for int8 weights): exported with its check on first use, read from there after.
The image tower stays torch's. Nothing heavy is imported until a model is given.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from retrieval.cache import cache_root
from retrieval.errors import TusouError

if TYPE_CHECKING:
    from retrieval.models.model import EmbeddingModel

RUNTIMES = ("torch", "onnx", "onnx-int8")
ONNX_FIX = "pip install 'tusou[onnx]'"


def require_onnx() -> None:
    """A missing package is one line naming the fix, before any model loads."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise TusouError(f"the ONNX runtime needs onnxruntime and onnx ({exc.name} is missing): {ONNX_FIX}") from None


def export_target(out: str | Path) -> Path:
    """The file an export is to be written to: not a folder (checked before any model loads)."""
    out = Path(out)
    if out.is_dir():
        raise TusouError(f"--out {out} is a folder: name the file to write, e.g. {out / 'model.onnx'}")
    return out


def check_runtime(runtime: str | None, onnx_file: str | Path | None) -> None:
    """A runtime tusou has, and an --onnx file only with an ONNX runtime and onnxruntime installed:
    one line before any model loads."""
    if runtime is not None and runtime not in RUNTIMES:
        raise TusouError(f"unknown runtime {runtime!r}: use {', '.join(RUNTIMES)}")
    if onnx_file is not None and runtime == "torch":
        raise TusouError("--onnx FILE is for --runtime onnx or onnx-int8 (or give --onnx alone)")
    if onnx_file is not None or runtime not in (None, "torch"):
        require_onnx()


def export_cache(model: EmbeddingModel, int8: bool) -> Path:
    """Where the cache keeps `model`'s export: keyed by its text tower's fingerprint and int8."""
    name = re.sub(r"[^\w.-]", "_", model.name)
    return cache_root() / "onnx" / f"{name}-{model.text_fingerprint()}{'-int8' if int8 else ''}.onnx"


def with_runtime(model: EmbeddingModel, runtime: str | None = None, onnx_file: str | Path | None = None) -> EmbeddingModel:
    """`model` with its text queries run as `runtime` says (None: torch, or the ONNX runtime of
    `onnx_file` when one is given). `model` must have its weights as loaded, in float32."""
    check_runtime(runtime, onnx_file)
    if onnx_file is None and runtime in (None, "torch"):
        return model
    if model.device.type != "cpu":
        raise TusouError(f"--runtime {runtime or 'onnx'} runs text queries on the CPU: use --device cpu")
    from retrieval.models.onnx_text import OnnxText

    int8 = runtime == "onnx-int8"
    path = Path(onnx_file) if onnx_file is not None else cached_export(model, int8)
    tower = OnnxText.open(path, model)
    if runtime is not None and tower.info.int8 != int8:
        kind, other = ("an int8", "onnx-int8") if tower.info.int8 else ("a float32", "onnx")
        raise TusouError(f"{path} is {kind} export: use --runtime {other}, or give --onnx alone")
    return model.with_text_tower(tower)


def cached_export(model: EmbeddingModel, int8: bool) -> Path:
    """The cache's export of `model`, made now (with its check; a note on stderr) if it is not there yet."""
    from retrieval.models.onnx_export import export_text_tower

    path = export_cache(model, int8)
    if not path.is_file():
        print(f"tusou: exporting {model.name}'s text tower to ONNX{' with int8 weights' if int8 else ''}, once, to {path} ...",
              file=sys.stderr, flush=True)
        report = export_text_tower(model, path, int8)
        print(f"tusou: exported and checked (lowest cosine to torch {report.lowest_cosine:.5f})", file=sys.stderr, flush=True)
    return path
