"""The family of distilled students: a small BERT whose mean-pooled tokens, projected, stand in for a
teacher's text vector, beside the teacher's own image tower (so the teacher's indexes stay valid).

Multilingual-CLIP's teacher learning (Carlsson et al., 2022): the student is trained on text alone
to reproduce the teacher's vectors (train.distill). Mean pooling over the attention mask, not BERT's
pooler: UER's miniatures are pre-trained by masked language modelling only, so their pooler is untrained.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertModel, BertTokenizer

from retrieval.errors import TusouError
from retrieval.models import hub
from retrieval.models.checkpoints import load_pretrained, quiet_transformers
from retrieval.models.families import WeightsPath
from retrieval.models.image_tower import load_image_tower, local_checkpoint
from retrieval.models.registry import ModelEntry, StudentTower, get_entry
from retrieval.models.text_tower import HUB_FILES, load_tokenizer
from retrieval.models.towers import LazyImageTower, TextEncoder, bert_inputs, seeded

PROJECTION = "projection.safetensors"


class StudentBert(TextEncoder):
    """A BERT, mean-pooled over the attention mask, then a linear map to the teacher's dimension.

    It pads to the longest text in the batch and passes the mask, so a text's vector is the one it
    gets alone, whatever else is in its batch."""

    def __init__(self, tokenizer: BertTokenizer, bert: BertModel, projection: torch.nn.Linear, context_length: int):
        super().__init__()
        self.tokenizer, self.bert, self.projection, self.context_length = tokenizer, bert, projection, context_length

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return bert_inputs(self.tokenizer, texts, self.context_length, longest=True, mask=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        return self.projection((tokens * mask).sum(1) / mask.sum(1).clamp(min=1.0))

    def weights(self) -> dict[str, torch.Tensor]:
        return {**{f"bert.{key}": value for key, value in self.bert.state_dict().items()},
                **{f"projection.{key}": value for key, value in self.projection.state_dict().items()}}

    def save(self, directory: Path) -> None:
        """In the layout `--text-weights` and a student's folder load: transformers' BERT, its vocabulary, the projection."""
        with quiet_transformers():
            self.bert.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        save_file({key: value.contiguous() for key, value in self.projection.state_dict().items()}, directory / PROJECTION)


def uer_weights(hub_id: str, name: str) -> Path:
    """A UER miniature's directory (the Hugging Face cache, else downloaded); offline, one line naming the fix."""
    fix = (f"the student {name!r} starts from it; pass --student DIR with a local copy of {hub_id}, go online once, "
           "or add --random to start from the architecture at random")
    return hub.snapshot(hub_id, HUB_FILES, fix=fix)


def student_text(entry: ModelEntry, directory: Path | None, projection: bool) -> StudentBert:
    """The student of `entry`: from `directory` (a transformers BERT; with its projection when
    `projection`, else a new one at random), or at random with the teacher's vocabulary."""
    spec: StudentTower = entry.text
    if directory is None:
        teacher = get_entry(spec.teacher).text
        tokenizer = load_tokenizer(teacher.hub_id, teacher.vocab_dir, None)
        with seeded(entry.seed):
            bert = BertModel(BertConfig(**{"vocab_size": len(tokenizer), **spec.bert}), add_pooling_layer=False)
    else:
        tokenizer, bert = BertTokenizer.from_pretrained(str(directory)), load_pretrained(directory, "BertModel", add_pooling_layer=False)
    with seeded(entry.seed + 1):
        linear = torch.nn.Linear(bert.config.hidden_size, entry.dim)
    if projection:
        saved = directory / PROJECTION
        if not saved.is_file():
            raise TusouError(f"{directory}: not a distilled student's text tower (no {PROJECTION}); `tusou distill` writes one")
        try:
            linear.load_state_dict(load_file(saved))
        except Exception as exc:  # noqa: BLE001 - damaged or of another width: one line
            raise TusouError(f"cannot load {saved}: {str(exc).splitlines()[0]}") from None
    return StudentBert(tokenizer, bert.eval(), linear, spec.context_length)


def load(entry: ModelEntry, pretrained: bool, text_weights: WeightsPath, image_weights: WeightsPath) -> tuple[StudentBert, LazyImageTower]:
    """A student's text tower from its weights (random when not `pretrained`) and its teacher's image tower, when first asked for."""
    if pretrained and text_weights is None:
        raise TusouError(f"{entry.name!r} is an architecture to distil, with no released weights: distil it with "
                         f"`tusou distill --teacher {entry.teacher} ...` and pass --model DIR (the folder it wrote)")
    text = student_text(entry, Path(text_weights) if text_weights is not None else None, projection=text_weights is not None)
    if image_weights is not None:
        local_checkpoint(image_weights)
    return text, LazyImageTower(partial(load_image_tower, get_entry(entry.teacher), pretrained, image_weights))
