"""The models tusou knows, as data: one entry per name, nothing model-specific elsewhere.

An entry says where each tower's weights come from and how a text or an image becomes a
vector. `load_model` (retrieval.model) is the only code that reads these fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from retrieval.errors import TusouError

PACKAGE_ASSETS = Path(__file__).resolve().parent / "assets"
"""Files shipped inside tusou: vocabularies, open_clip configs, the demo model's weights."""


@dataclass(frozen=True)
class TextTower:
    """A BERT text tower whose `feature` output is the text vector."""

    hub_id: str | None = None
    """Hugging Face repo with config, vocab and weights; None for towers tusou builds itself."""
    package_dir: str | None = None
    """Weights shipped inside tusou, relative to retrieval/assets."""
    bert: Mapping[str, Any] = field(default_factory=dict)
    """BertConfig fields, for building the architecture without weights."""
    vocab_dir: str = "char-vocab"
    """Vocabulary (retrieval/assets) for a build without weights, unless the hub's is cached."""
    feature: str = "pooler_output"
    context_length: int = 77
    dynamic_padding: bool = False
    """False: pad every text to `context_length`, no attention mask (Taiyi-CLIP's own code;
    batch-invariant). True: pad to the longest text in the batch and pass the mask."""


@dataclass(frozen=True)
class ImageTower:
    """An open_clip model whose `encode_image` is the image vector."""

    arch: str
    """open_clip model name (config), e.g. ViT-L-14-quickgelu."""
    pretrained: str | None = None
    """open_clip pretrained tag, fetched through the Hugging Face cache."""
    package_file: str | None = None
    """Checkpoint shipped inside tusou, relative to retrieval/assets."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    dim: int
    text: TextTower
    image: ImageTower
    description: str
    seed: int = 0
    """Seed for every randomly initialised part, so random builds are reproducible."""


def bert(hidden: int, layers: int, heads: int, positions: int, **extra: Any) -> Mapping[str, Any]:
    """BertConfig fields of a BERT with the usual 4x feed-forward width."""
    return MappingProxyType(
        dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
             intermediate_size=4 * hidden, max_position_embeddings=positions, type_vocab_size=2, **extra)
    )


BERT_BASE_CHINESE = bert(768, 12, 12, 512, vocab_size=21128)
DEMO_BERT = bert(128, 4, 4, 64)
TINY_BERT = bert(64, 2, 2, 80)

MODELS: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in [
        ModelEntry(
            name="taiyi-clip-l14",
            dim=768,
            text=TextTower(hub_id="IDEA-CCNL/Taiyi-CLIP-RoBERTa-102M-ViT-L-Chinese", bert=BERT_BASE_CHINESE),
            image=ImageTower(arch="ViT-L-14-quickgelu", pretrained="openai"),
            description="Taiyi-CLIP RoBERTa-102M text tower + OpenAI CLIP ViT-L/14 image tower (frozen)",
        ),
        ModelEntry(
            name="demo",
            dim=128,
            text=TextTower(package_dir="demo/text", bert=DEMO_BERT, vocab_dir="demo-vocab", context_length=32),
            image=ImageTower(arch="tusou-demo-rn", package_file="demo/image.safetensors"),
            description="small towers trained by tusou on its synthetic Chinese caption set (offline, shipped)",
        ),
        ModelEntry(
            name="test-tiny",
            dim=64,
            text=TextTower(bert=TINY_BERT),
            image=ImageTower(arch="tusou-tiny-vit"),
            description="tiny random towers (fixed seed) for tests; no weights to fetch",
        ),
    ]
}

DEFAULT_MODEL = "taiyi-clip-l14"


def get_entry(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise TusouError(f"unknown model {name!r}: choose one of {', '.join(MODELS)} (see `tusou models`)") from None
