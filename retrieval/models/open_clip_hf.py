"""An open_clip model whose text tower is a Hugging Face transformer (multilingual CLIP).

open_clip builds such a text tower by fetching the transformer's config and tokenizer by
name from the hub; tusou resolves that name to a directory first (HF cache, or
--text-weights DIR), so a missing file is one clear line and an offline machine never waits.
The weights of both towers come from the one open_clip checkpoint, so both are built at once
(the image tower is not deferred: it shares the one model).
"""

from __future__ import annotations

from collections.abc import Sequence

import open_clip
import torch
from open_clip.tokenizer import HFTokenizer

from retrieval.models.families import WeightsPath
from retrieval.models.image_tower import OpenClipImage, checkpoint, create_open_clip
from retrieval.models.registry import ImageTower, ModelEntry, OpenClip
from retrieval.models.text_tower import weights_dir
from retrieval.models.towers import LazyImageTower, TextEncoder, state_part

CONFIG_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json", "sentencepiece.bpe.model", "special_tokens_map.json"]


class OpenClipText(TextEncoder):
    def __init__(self, clip: torch.nn.Module, tokenizer: HFTokenizer):
        super().__init__()
        self.clip, self.tokenizer = clip, tokenizer
        self.context_length = int(tokenizer.context_length)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """open_clip's own tokenizer: padded to the context length; the model masks the padding."""
        return {"text": self.tokenizer(list(texts))}

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(text)

    def weights(self) -> dict[str, torch.Tensor]:
        return state_part(self.clip, ("text.",))


def _image(spec: OpenClip) -> ImageTower:
    """The spec's image side as an open_clip image tower spec: its checkpoint and source are found alike."""
    return ImageTower(arch=spec.arch, pretrained=spec.pretrained, hub=spec.hub)


def load_open_clip_hf(
    entry: ModelEntry, pretrained: bool, text_weights: WeightsPath, image_weights: WeightsPath
) -> tuple[OpenClipText, LazyImageTower]:
    """Both towers, sharing one open_clip model; the checkpoint from --image-weights FILE or the
    pretrained tag, the transformer's config and tokenizer from --text-weights DIR or the hub."""
    spec = entry.text
    text_dir = weights_dir(entry.name, spec.text_hub_id, text_weights, files=CONFIG_FILES)  # needed even at random
    path, preprocess_cfg = checkpoint(entry.name, _image(spec), image_weights, pretrained)
    text_cfg = {**open_clip.get_model_config(spec.arch)["text_cfg"],
                "hf_model_name": str(text_dir), "hf_tokenizer_name": str(text_dir), "hf_model_pretrained": False}
    clip, preprocess = create_open_clip(spec.arch, entry.seed, path, preprocess_cfg, text_cfg=text_cfg)
    tokenizer = HFTokenizer(str(text_dir), context_length=spec.context_length)
    return OpenClipText(clip, tokenizer), LazyImageTower(tower=OpenClipImage(clip, preprocess))
