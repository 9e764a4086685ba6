"""The BERT text tower (Taiyi-CLIP, tusou's own models) and its tokenizer, from a local
directory, the package, the hub, or at random; also what Chinese-CLIP's BERT side shares with it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
import transformers
from transformers import BertConfig, BertTokenizer, PretrainedConfig, PreTrainedModel

from retrieval.errors import TusouError
from retrieval.models import hub
from retrieval.models.checkpoints import load_pretrained
from retrieval.models.registry import PACKAGE_ASSETS, ModelEntry
from retrieval.models.families import WeightsPath
from retrieval.models.towers import TextEncoder, bert_inputs, seeded

HUB_FILES = ["config.json", "vocab.txt", "*.safetensors", "pytorch_model.bin", "tokenizer*", "special_tokens_map.json"]
CHAR_VOCAB = PACKAGE_ASSETS / "char-vocab"


def weights_dir(
    name: str, hub_id: str | None, local: WeightsPath, package_dir: str | None = None, files: list[str] = HUB_FILES
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


def bert_files(
    name: str, hub_id: str | None, vocab_dir: str, pretrained: bool, text_weights: WeightsPath, package_dir: str | None = None
) -> tuple[Path | None, BertTokenizer]:
    """A BERT-based tower's weights directory (None: build it at random) and its tokenizer."""
    load = pretrained or text_weights is not None
    directory = weights_dir(name, hub_id, text_weights, package_dir) if load else None
    return directory, load_tokenizer(hub_id, vocab_dir, directory)


def transformers_model(directory: Path | None, architecture: str, config: Callable[[], PretrainedConfig], seed: int) -> PreTrainedModel:
    """transformers' `architecture` with the weights in `directory` (read safely), or at random from
    `seed` with `config()` when there is no directory; in eval mode."""
    if directory is not None:
        return load_pretrained(directory, architecture).eval()
    with seeded(seed):
        return getattr(transformers, architecture)(config()).eval()


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


def load_text_tower(entry: ModelEntry, pretrained: bool, text_weights: WeightsPath) -> BertText:
    """The entry's BERT from --text-weights DIR, the package or the hub; its architecture at random
    (fixed seed) when not `pretrained` or when the entry has no weights."""
    spec = entry.text
    directory, tokenizer = bert_files(entry.name, spec.hub_id, spec.vocab_dir, pretrained, text_weights, spec.package_dir)
    config = partial(BertConfig, **{"vocab_size": len(tokenizer), "num_labels": entry.dim, **spec.bert})
    model = transformers_model(directory, spec.architecture, config, entry.seed)
    return BertText(tokenizer, model, spec.feature, spec.context_length, spec.dynamic_padding)
