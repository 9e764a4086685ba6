"""The family of a BERT text tower beside an open_clip image tower (Taiyi-CLIP, demo, test-tiny).

The two towers come from separate files, so the image tower is built only when first needed: a
text-only query loads the BERT alone. A wrong --image-weights path still fails at load time (a
cheap check), while reading the checkpoint waits for the tower's first use.
"""

from __future__ import annotations

from functools import partial

from retrieval.models.families import WeightsPath
from retrieval.models.image_tower import load_image_tower, local_checkpoint
from retrieval.models.registry import ModelEntry
from retrieval.models.text_tower import BertText, load_text_tower
from retrieval.models.towers import LazyImageTower


def load(entry: ModelEntry, pretrained: bool, text_weights: WeightsPath, image_weights: WeightsPath) -> tuple[BertText, LazyImageTower]:
    """The text tower now; the image tower when first asked for."""
    text = load_text_tower(entry, pretrained, text_weights)
    if image_weights is not None:
        local_checkpoint(image_weights)
    return text, LazyImageTower(partial(load_image_tower, entry, pretrained, image_weights))

