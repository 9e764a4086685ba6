"""Exporting a model's text tower to ONNX, checked against the torch tower before it is kept.

Any TextEncoder exports: its `tokenize` outputs are the graph's inputs (batch and sequence
dynamic), its raw features the output. THE CHECK runs the written graph in ONNX Runtime, through
the same OnnxText a search uses, on fixed Chinese queries (one character; a caption longer than
the context, truncated; each alone and all in one batch) and compares the unit vectors with the
torch tower's float32 ones: an export is refused unless every cosine is at least FP32_FLOOR
(INT8_FLOOR for int8 weights). A plain export of this BERT once gave cosine 0.87 against eager
mode; a number like that never reaches the destination. The file is written beside the
destination and renamed onto it only once it passed, so a refused or interrupted export leaves
nothing there.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from retrieval.errors import TusouError
from retrieval.models.onnx_text import OUTPUT, ExportInfo, OnnxText
from retrieval.models.runtime import export_target, require_onnx
from retrieval.models.towers import TextEncoder

if TYPE_CHECKING:
    import onnx

    from retrieval.models.model import EmbeddingModel

FP32_FLOOR = 0.9999
"""The lowest cosine a float32 export may give against the torch tower (the rule bf16 is held to)."""
INT8_FLOOR = 0.99
"""The lowest for int8 weights, which need not reach FP32_FLOOR (torch's own int8 of BERT-base gave
0.999); below it rankings visibly change. Measured: docs/performance.md."""
LONG_QUERY = "左边一个红色的圆形，右边一个蓝色的三角形，上面还有两个绿色的正方形和一颗小小的紫色星星。" * 4
CHECK_QUERIES = ("红", "圆形", "一个红色的圆形", "两个绿色的正方形", "黄色背景上有一个小的紫色星形", "海边的日落",
                 "一只在草地上奔跑的小狗", LONG_QUERY)
"""Varied lengths: a single character, short and long captions, and one past any context length."""
EXAMPLE = ("一个红色的圆形", "圆")
"""The inputs the graph is captured with: two texts of different lengths, so that neither the
batch nor (with dynamic padding) the sequence is 1 or equal, which torch.export would specialise."""


@dataclass(frozen=True)
class ExportReport:
    path: Path
    lowest_cosine: float
    """The lowest cosine of the export's unit vectors to the torch tower's over CHECK_QUERIES."""
    bytes: int
    int8: bool


class _Positional(torch.nn.Module):
    """The tower with its inputs in the tokenizer's order: an exported graph takes them positionally."""

    def __init__(self, tower: TextEncoder, names: tuple[str, ...]):
        super().__init__()
        self.tower, self.names = tower, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.tower(**dict(zip(self.names, tensors)))


def graph(tower: TextEncoder, info: ExportInfo) -> onnx.ModelProto:
    """The tower's ONNX graph, `info` in its metadata.

    torch.export (the dynamo exporter, torch's default) captures the graph with batch and sequence
    as symbols, so a branch on a shape in transformers' attention (whether to build a mask, whether
    attention is causal) is kept general or guarded. The legacy TorchScript tracer records the branch
    the example inputs took as a constant (its TracerWarnings say so), which is how a traced export
    can agree with eager mode on the example and not on other inputs. With torch 2.14 and
    transformers 5 both passed the check on test-tiny and demo; the check, not the choice, is
    what guards the output."""
    import onnx

    inputs = tower.tokenize(list(EXAMPLE))
    example = tuple(inputs[name] for name in info.inputs)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")  # one of each, shared by every input
    axes = tuple({0: batch, 1: sequence} for _ in info.inputs)
    try:
        with warnings.catch_warnings():
            # the axes are named once; torch.onnx warns of each further input whose axes it did not name again
            warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used")
            program = torch.onnx.export(_Positional(tower, info.inputs).eval(), example, None, input_names=list(info.inputs),
                                        output_names=[OUTPUT], dynamic_shapes=(axes,), dynamo=True, verbose=False)
    except Exception as exc:  # torch.export's failures come as many types, each with a long report
        raise TusouError(f"cannot export {info.model}'s text tower to ONNX: {str(exc).strip().splitlines()[0][:300]}") from None
    proto = program.model_proto
    onnx.helper.set_model_props(proto, info.to_props())
    return proto


def lowest_cosine(model: EmbeddingModel, exported: EmbeddingModel) -> float:
    """The lowest cosine between `exported`'s vectors of CHECK_QUERIES and `model`'s own (NaN if any
    is not a number), each query alone and all in one batch."""
    cosines = []
    for batch in [[query] for query in CHECK_QUERIES] + [list(CHECK_QUERIES)]:
        expected, found = model.encode_texts(batch), exported.encode_texts(batch)
        if found.shape != expected.shape:
            raise TusouError(f"the export gives vectors of shape {found.shape[1:]}, the torch tower {expected.shape[1:]}: not kept")
        cosines.append(np.sum(expected * found, axis=1))
    return float(np.min(np.concatenate(cosines)))


@contextlib.contextmanager
def _beside(destination: Path) -> Iterator[Path]:
    """A temporary file's path in `destination`'s folder (so a rename onto it is atomic); removed
    after unless renamed."""
    handle, name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def export_text_tower(model: EmbeddingModel, out: str | Path, int8: bool = False) -> ExportReport:
    """Write `model`'s text tower to `out` as ONNX (int8 weights by onnxruntime's dynamic
    quantisation when `int8`), once THE CHECK passed; TusouError, and nothing at `out`, if not.

    The model must be on the CPU in float32: the check compares with its float32 vectors."""
    require_onnx()
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if model.device.type != "cpu" or model.dtype != torch.float32:
        raise TusouError("an ONNX export is made from the float32 weights on the CPU: load the model with device cpu and fp32")
    out = export_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = ExportInfo.of(model, int8)
    proto = graph(model.text_model, info)
    with _beside(out) as scratch:
        if int8:
            quantize_dynamic(proto, scratch, weight_type=QuantType.QInt8)  # weights int8, activations quantised per run
        else:
            onnx.save(proto, scratch)
        tower = OnnxText.open(scratch, model)  # run as a search runs it, its metadata read back and checked
        lowest = lowest_cosine(model, model.with_text_tower(tower))
        floor = INT8_FLOOR if int8 else FP32_FLOOR
        if not lowest >= floor:
            raise TusouError(f"refused: the ONNX export's vectors differ from the torch tower's (lowest cosine {lowest:.5f}, "
                             f"needs {floor}); nothing written to {out}")
        os.replace(scratch, out)
    return ExportReport(out, lowest, out.stat().st_size, int8)
