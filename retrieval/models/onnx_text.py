"""A text tower run by ONNX Runtime from an export of a model's own (retrieval.models.onnx_export).

The export's metadata names the weights it was made from (the model and its text-tower
fingerprint) and how its inputs were tokenized, so a tower of other weights, or of the same
weights tokenized another way, is refused in one line instead of giving wrong vectors.
onnxruntime is an optional extra (`tusou[onnx]`): a missing package is one line naming the fix
(retrieval.models.runtime.require_onnx).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from retrieval.errors import TusouError
from retrieval.models.runtime import require_onnx
from retrieval.models.towers import TextEncoder

if TYPE_CHECKING:
    import onnxruntime

    from retrieval.models.model import EmbeddingModel

OUTPUT = "features"


@dataclass(frozen=True)
class ExportInfo:
    """What an export says of itself, in its metadata_props (each key prefixed `tusou.`)."""

    model: str
    text_fingerprint: str
    inputs: tuple[str, ...]
    """The tokenizer's outputs the graph takes, in order (input_ids; attention_mask with dynamic padding)."""
    context_length: int
    padding: str
    """`max_length` (every text padded to context_length) or `longest` (to the longest in its batch)."""
    int8: bool

    @classmethod
    def of(cls, model: EmbeddingModel, int8: bool) -> ExportInfo:
        """What an export of `model`'s text tower records (its fingerprint: of the weights as loaded)."""
        tower = model.text_model
        inputs = tower.tokenize(["一"])
        padding = "max_length" if next(iter(inputs.values())).shape[1] == tower.context_length else "longest"
        return cls(model.name, model.text_fingerprint(), tuple(inputs), tower.context_length, padding, int8)

    def to_props(self) -> dict[str, str]:
        return {"tusou.model": self.model, "tusou.text_fingerprint": self.text_fingerprint, "tusou.inputs": ",".join(self.inputs),
                "tusou.context_length": str(self.context_length), "tusou.padding": self.padding, "tusou.int8": str(self.int8).lower()}

    @classmethod
    def from_props(cls, props: dict[str, str], path: Path) -> ExportInfo:
        try:
            return cls(props["tusou.model"], props["tusou.text_fingerprint"], tuple(props["tusou.inputs"].split(",")),
                       int(props["tusou.context_length"]), props["tusou.padding"], props["tusou.int8"] == "true")
        except (KeyError, ValueError):
            raise TusouError(f"{path} is not a text tower exported by `tusou export` (its metadata does not say whose it is)") from None

    def check(self, expected: ExportInfo, path: Path) -> None:
        """Raise unless this export is of `expected`'s weights, tokenized the same way (the int8 flag aside)."""
        if (self.model, self.text_fingerprint) != (expected.model, expected.text_fingerprint):
            raise TusouError(f"{path} is an export of other weights ({self.model!r}, text tower fingerprint {self.text_fingerprint}; "
                             f"these are {expected.model!r}, {expected.text_fingerprint}): make one with `tusou export --model {expected.model}`, "
                             "or leave out --onnx to use the cache's")
        if (self.inputs, self.context_length, self.padding) != (expected.inputs, expected.context_length, expected.padding):
            raise TusouError(f"{path} was exported for other tokenizer settings ({self.padding} padding to {self.context_length} tokens, "
                             f"inputs {', '.join(self.inputs)}): make one with `tusou export --model {expected.model}`")


def session(path: str | Path) -> onnxruntime.InferenceSession:
    """An onnxruntime session on the CPU with as many threads as torch uses (one process, one budget of cores)."""
    require_onnx()
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # its warnings (thread affinity) are not the user's business
    # No spin-waiting after a run: its threads would hold the cores the image tower, FAISS and the
    # server's other requests need next (torch fp32 ran 1.8x slower beside a spinning session).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
        raise TusouError(f"{path}: not an ONNX model ONNX Runtime can load ({str(exc).splitlines()[0][:200]})") from None


def read_info(run: onnxruntime.InferenceSession, path: Path) -> ExportInfo:
    return ExportInfo.from_props(dict(run.get_modelmeta().custom_metadata_map), path)


class OnnxText(TextEncoder):
    """A text tower whose forward pass is an ONNX Runtime session (float32 or int8 inside); it
    tokenizes as the torch tower it was exported from, and has no torch weights of its own.

    onnxruntime releases the interpreter lock while a session runs, and a session may be run from
    several threads at once, so a copy of a model shares it (`__deepcopy__`)."""

    def __init__(self, run: onnxruntime.InferenceSession, info: ExportInfo, tokenize: Callable[[Sequence[str]], dict[str, torch.Tensor]],
                 context_length: int):
        super().__init__()
        self.session, self.info, self._tokenize, self.context_length = run, info, tokenize, context_length

    @classmethod
    def open(cls, path: str | Path, model: EmbeddingModel) -> OnnxText:
        """The export at `path` as `model`'s text tower: refused unless it was made from `model`'s weights."""
        path = Path(path)
        run = session(path)
        info = read_info(run, path)
        info.check(ExportInfo.of(model, info.int8), path)
        return cls(run, info, _without_weights(model.text_model).tokenize, model.text_model.context_length)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self._tokenize(texts)

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        feeds = {name: inputs[name].cpu().numpy() for name in self.info.inputs}
        return torch.from_numpy(self.session.run([OUTPUT], feeds)[0])

    def weights(self) -> dict[str, torch.Tensor]:
        """None to hash: a model holding this tower keeps the fingerprints of the weights it was exported from."""
        return {}

    @property
    def runs_in(self) -> str:
        return "onnx int8" if self.info.int8 else "onnx float32"

    def __deepcopy__(self, memo: dict) -> OnnxText:
        return self


def _without_weights(tower: TextEncoder) -> TextEncoder:
    """A copy of `tower` whose tensors are on torch's meta device (shapes, no storage): its `tokenize`
    (the tokenizer and its settings) without holding the torch weights the export replaces in memory."""
    memo: dict[int, object] = {id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False) for p in tower.parameters()}
    memo.update((id(b), torch.empty_like(b, device="meta")) for b in tower.buffers())
    return copy.deepcopy(tower, memo)
