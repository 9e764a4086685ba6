"""Loading a BERT text tower and its tokenizer, from a local directory, the hub, or at random."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizer

from retrieval import hub
from retrieval.errors import TusouError
from retrieval.image_tower import refused_by_unpickler, unsafe_pickle
from retrieval.registry import PACKAGE_ASSETS, ModelEntry

HUB_FILES = ["config.json", "vocab.txt", "*.safetensors", "pytorch_model.bin", "tokenizer*", "special_tokens_map.json"]
CHAR_VOCAB = PACKAGE_ASSETS / "char-vocab"


def weights_dir(entry: ModelEntry, text_weights: str | Path | None) -> Path | None:
    """The directory the text weights load from, or None for a tower built at random."""
    if text_weights is not None:
        path = Path(text_weights)
        if not (path / "config.json").is_file():
            raise TusouError(f"--text-weights {path}: not a transformers model directory (no config.json)")
        return path
    if entry.text.package_dir is not None:
        return PACKAGE_ASSETS / entry.text.package_dir
    if entry.text.hub_id is not None:
        fix = f"use --model demo, pass --text-weights DIR with a copy of {entry.text.hub_id}, or go online once"
        return hub.snapshot(entry.text.hub_id, HUB_FILES, fix=f"model {entry.name!r} needs it; {fix}")
    return None


def load_tokenizer(entry: ModelEntry, directory: Path | None) -> BertTokenizer:
    """The tower's own vocabulary; a random build uses the cached hub vocab or tusou's CJK one."""
    if directory is None and entry.text.hub_id is not None and hub.cached(entry.text.hub_id, ["vocab.txt"]):
        directory = hub.snapshot(entry.text.hub_id, ["vocab.txt", "tokenizer*", "special_tokens_map.json"], fix="")
    return BertTokenizer.from_pretrained(str(directory or PACKAGE_ASSETS / entry.text.vocab_dir))


def load_weights(directory: Path) -> BertModel:
    """The tower from a transformers directory: model.safetensors when there is one, else
    pytorch_model.bin through torch.load(weights_only=True).

    weights_only is transformers' default, passed here anyway: an implicit default is what
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD turns off, and a refused file must be one line, not a traceback.
    """
    try:
        return BertModel.from_pretrained(str(directory), weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a refused pickle, missing, truncated or mismatched weights: one line
        if refused_by_unpickler(exc):
            pickled = directory / "pytorch_model.bin"
            fix = "use a directory with model.safetensors instead (model.save_pretrained(DIR) writes one) from a source you trust"
            raise unsafe_pickle("text weights", pickled if pickled.is_file() else directory, exc, fix) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TusouError(f"cannot load text weights from {directory}: {first}") from None


def load_text_tower(entry: ModelEntry, pretrained: bool, text_weights: str | Path | None) -> tuple[BertTokenizer, BertModel]:
    directory = weights_dir(entry, text_weights) if pretrained or text_weights is not None else None
    tokenizer = load_tokenizer(entry, directory)
    if directory is not None:
        model = load_weights(directory)
    else:
        config = BertConfig(**{"vocab_size": len(tokenizer), **entry.text.bert})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(entry.seed)
            model = BertModel(config)
    return tokenizer, model.eval()
