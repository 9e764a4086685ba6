"""The BERT text tower (Taiyi-CLIP, tusou's own models) and its tokenizer, from a local
directory, the hub, or at random."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import transformers
from transformers import BertConfig, BertTokenizer, PreTrainedModel

from retrieval.models import hub
from retrieval.errors import TusouError
from retrieval.models.image_tower import refused_by_unpickler, unsafe_pickle
from retrieval.models.registry import PACKAGE_ASSETS, ModelEntry
from retrieval.models.towers import TextEncoder, bert_inputs

HUB_FILES = ["config.json", "vocab.txt", "*.safetensors", "pytorch_model.bin", "tokenizer*", "special_tokens_map.json"]
CHAR_VOCAB = PACKAGE_ASSETS / "char-vocab"


def weights_dir(
    name: str, hub_id: str | None, local: str | Path | None, package_dir: str | None = None, files: list[str] = HUB_FILES
) -> Path | None:
    """The transformers directory weights load from: `local` (--text-weights), the package, or the
    hub's `files` of `hub_id` (cache first); None for a tower built at random."""
    if local is not None:
        path = Path(local)
        if not (path / "config.json").is_file():
            raise TusouError(f"--text-weights {path}: not a transformers model directory (no config.json)")
        return path
    if package_dir is not None:
        return PACKAGE_ASSETS / package_dir
    if hub_id is not None:
        fix = f"use --model demo, pass --text-weights DIR with a copy of {hub_id}, or go online once"
        return hub.snapshot(hub_id, files, fix=f"model {name!r} needs it; {fix}")
    return None


def load_tokenizer(hub_id: str | None, vocab_dir: str, directory: Path | None) -> BertTokenizer:
    """The tower's own vocabulary; a random build uses the cached hub vocab or tusou's CJK one."""
    if directory is None and hub_id is not None and hub.cached(hub_id, ["vocab.txt"]):
        directory = hub.snapshot(hub_id, ["vocab.txt", "tokenizer*", "special_tokens_map.json"], fix="")
    return BertTokenizer.from_pretrained(str(directory or PACKAGE_ASSETS / vocab_dir))


class BertText(TextEncoder):
    """A BERT whose `feature` output is the text vector."""

    def __init__(self, tokenizer: BertTokenizer, bert: PreTrainedModel, feature: str, context_length: int, dynamic_padding: bool):
        super().__init__()
        self.tokenizer, self.bert, self.feature = tokenizer, bert, feature
        self.context_length, self.dynamic_padding = context_length, dynamic_padding

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Taiyi-CLIP's way by default: every text padded to 77 tokens, no attention mask."""
        dynamic = self.dynamic_padding
        return bert_inputs(self.tokenizer, texts, self.context_length, longest=dynamic, mask=dynamic)

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return getattr(self.bert(**inputs), self.feature)

    def weights(self) -> dict[str, torch.Tensor]:
        return self.bert.state_dict()


def load_weights(directory: Path, architecture: str = "BertModel") -> PreTrainedModel:
    """A transformers model (`architecture`) from a directory: model.safetensors when there is one, else
    pytorch_model.bin through torch.load(weights_only=True).

    weights_only is transformers' default, passed here anyway: an implicit default is what
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD turns off, and a refused file must be one line, not a traceback.
    """
    try:
        return getattr(transformers, architecture).from_pretrained(str(directory), weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a refused pickle, missing, truncated or mismatched weights: one line
        if refused_by_unpickler(exc):
            pickled = directory / "pytorch_model.bin"
            fix = "use a directory with model.safetensors instead (model.save_pretrained(DIR) writes one) from a source you trust"
            raise unsafe_pickle("text weights", pickled if pickled.is_file() else directory, exc, fix) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TusouError(f"cannot load text weights from {directory}: {first}") from None


def load_text_tower(entry: ModelEntry, pretrained: bool, text_weights: str | Path | None) -> BertText:
    spec = entry.text
    load = pretrained or text_weights is not None
    directory = weights_dir(entry.name, spec.hub_id, text_weights, spec.package_dir) if load else None
    tokenizer = load_tokenizer(spec.hub_id, spec.vocab_dir, directory)
    if directory is not None:
        model = load_weights(directory, spec.architecture)
    else:
        config = BertConfig(**{"vocab_size": len(tokenizer), "num_labels": entry.dim, **spec.bert})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(entry.seed)
            model = getattr(transformers, spec.architecture)(config)
    return BertText(tokenizer, model.eval(), spec.feature, spec.context_length, spec.dynamic_padding)
