"""Chinese-CLIP (OFA-Sys) through transformers' ChineseCLIPModel: both towers from one checkpoint,
so both are built at once (the image tower is not deferred: it shares the one model).

The vectors are the library's own `get_text_features` / `get_image_features`; what tusou adds
is Chinese-CLIP's input conventions, which the transformers processor does not follow: its
image processor resizes the short side and center-crops, while Chinese-CLIP's code resizes
to a square; its tokenizer pads to the longest text, while Chinese-CLIP pads to 52 tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torchvision import transforms
from transformers import BertTokenizer, ChineseCLIPConfig, ChineseCLIPModel

from retrieval.errors import TusouError
from retrieval.models.families import WeightsPath
from retrieval.models.registry import ModelEntry
from retrieval.models.text_tower import bert_files, transformers_model
from retrieval.models.towers import (
    ImageEncoder,
    LazyImageTower,
    TextEncoder,
    bert_inputs,
    state_part,
    temperature,
)


def _rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def square_preprocess(size: int) -> transforms.Compose:
    """Chinese-CLIP's eval transform: bicubic resize to size × size (no crop), CLIP mean/std."""
    return transforms.Compose([
        transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
        _rgb,
        transforms.ToTensor(),
        transforms.Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD),
    ])


class ChineseClipText(TextEncoder):
    def __init__(self, clip: ChineseCLIPModel, tokenizer: BertTokenizer, context_length: int):
        super().__init__()
        self.clip, self.tokenizer, self.context_length = clip, tokenizer, context_length

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return bert_inputs(self.tokenizer, texts, self.context_length, longest=False, mask=True)

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.clip.get_text_features(**inputs).pooler_output

    def weights(self) -> dict[str, torch.Tensor]:
        return state_part(self.clip, ("text_model.", "text_projection."))


class ChineseClipImage(ImageEncoder):
    def __init__(self, clip: ChineseCLIPModel):
        super().__init__()
        self.clip = clip
        self.preprocess = square_preprocess(self.image_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.clip.get_image_features(pixel_values=pixels).pooler_output

    @property
    def image_size(self) -> int:
        return int(self.clip.config.vision_config.image_size)

    @property
    def logit_scale(self) -> float:
        return temperature(self.clip.logit_scale)

    def weights(self) -> dict[str, torch.Tensor]:
        return state_part(self.clip, ("vision_model.", "visual_projection."))


def load_chinese_clip(
    entry: ModelEntry, pretrained: bool, text_weights: WeightsPath, image_weights: WeightsPath
) -> tuple[ChineseClipText, LazyImageTower]:
    """Both towers, sharing one ChineseCLIPModel: from --text-weights DIR, the hub, or at random."""
    spec = entry.text
    if image_weights is not None:
        raise TusouError(f"model {entry.name!r} keeps both towers in one transformers directory: pass it as --text-weights DIR")
    directory, tokenizer = bert_files(entry.name, spec.hub_id, "char-vocab", pretrained, text_weights)

    def config() -> ChineseCLIPConfig:
        fields = dict(spec.config)
        return ChineseCLIPConfig(**{**fields, "text_config": {**fields["text_config"], "vocab_size": len(tokenizer)}})

    clip = transformers_model(directory, "ChineseCLIPModel", config, entry.seed)
    return ChineseClipText(clip, tokenizer, spec.context_length), LazyImageTower(tower=ChineseClipImage(clip))
