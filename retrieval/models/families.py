"""The model families, as data: which module loads an entry's towers and where their weights come from.

An entry's family is picked by the type of its text spec, once, here, for loading and for
describing its weights alike. Describing reads only the registry and local caches, and imports
no torch, transformers or open_clip: `tusou models` answers at once. A family's loader module is
imported when a model of it is first loaded.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from retrieval.models import hub
from retrieval.models.registry import PACKAGE_ASSETS, ChineseClip, ImageTower, ModelEntry, OpenClip, StudentTower, TextTower

if TYPE_CHECKING:
    from retrieval.models.towers import LazyImageTower, TextEncoder

WeightsPath = str | Path | None
OPEN_CLIP_WEIGHT_FILES = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
"""The file names open_clip looks for in a hub repo, safetensors first (its HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME)."""


class Source(NamedTuple):
    """Where a tower's weights come from, in words, and whether they are on this machine."""

    where: str
    present: bool


@dataclass(frozen=True)
class Family:
    """One family of registry entries: `loader` is `module:function`, called as
    `function(entry, pretrained, text_weights, image_weights)` → (text tower, lazy image tower)."""

    loader: str
    text_source: Callable[[ModelEntry], Source]
    image_source: Callable[[ModelEntry], Source]

    def load(self, entry: ModelEntry, pretrained: bool, text_weights: WeightsPath,
             image_weights: WeightsPath) -> tuple[TextEncoder, LazyImageTower]:
        module, function = self.loader.split(":")
        return getattr(importlib.import_module(module), function)(entry, pretrained, text_weights, image_weights)


def open_clip_checkpoint(location: str) -> tuple[str, list[str]]:
    """The hub repo and candidate file names of an open_clip pretrained tag's `hub` location
    (`org/repo/`, or `org/repo/file` where open_clip names one file)."""
    parts = location.rstrip("/").split("/")
    repo = "/".join(parts[:2])
    return (repo, ["/".join(parts[2:])]) if len(parts) > 2 else (repo, OPEN_CLIP_WEIGHT_FILES)


def hub_source(repo_id: str, what: str = "") -> Source:
    """A hub repo as a source; present when its config is in the local cache (no network)."""
    return Source(f"hub:{repo_id}{what}", hub.cached(repo_id, ["config.json"]))


def bert_source(entry: ModelEntry) -> Source:
    """Where a BERT text tower's weights come from: the package, the hub, or a seed."""
    spec = entry.text
    if spec.package_dir:
        return Source(f"package:{spec.package_dir}", (PACKAGE_ASSETS / spec.package_dir / "config.json").is_file())
    if spec.hub_id:
        return hub_source(spec.hub_id)
    return Source("random (fixed seed)", True)


def open_clip_source(spec: ImageTower | OpenClip) -> Source:
    """Where an open_clip image tower's weights come from: the package, a pretrained tag, or a seed."""
    if getattr(spec, "package_file", None):
        return Source(f"package:{spec.package_file}", (PACKAGE_ASSETS / spec.package_file).is_file())
    if spec.pretrained and spec.hub:
        repo, names = open_clip_checkpoint(spec.hub)
        return Source(f"open_clip:{spec.arch}/{spec.pretrained} (hub:{repo})", hub.cached(repo, names))
    return Source(f"open_clip:{spec.arch}, random (fixed seed)", True)


def student_source(entry: ModelEntry) -> Source:
    """A registered student has no released weights: `tusou distill` makes them (from UER's, where it has the size)."""
    start = f", from hub:{entry.text.hub_id}" if entry.text.hub_id else ", from random weights"
    return Source(f"distilled from {entry.teacher} by `tusou distill`{start}", False)


FAMILIES: dict[type, Family] = {
    TextTower: Family("retrieval.models.bert_open_clip:load", bert_source, lambda entry: open_clip_source(entry.image)),
    ChineseClip: Family("retrieval.models.chinese_clip:load_chinese_clip",
                        lambda entry: hub_source(entry.text.hub_id), lambda entry: hub_source(entry.text.hub_id)),
    OpenClip: Family("retrieval.models.open_clip_hf:load_open_clip_hf",
                     lambda entry: hub_source(entry.text.text_hub_id, " (config, tokenizer)"), lambda entry: open_clip_source(entry.image)),
    StudentTower: Family("retrieval.models.student:load", student_source, lambda entry: open_clip_source(entry.image)),
}
"""Each family's record, by the type of an entry's text spec."""


def family_of(entry: ModelEntry) -> Family:
    """The one way an entry's family is picked, for loading and for describing its sources alike."""
    return FAMILIES[type(entry.text)]


def weight_sources(entry: ModelEntry, text_weights: Path | None = None) -> dict[str, object]:
    """Where an entry's weights come from and whether they are on this machine (no network);
    `text_weights`: a distilled student's, in the folder `--model` named."""
    family = family_of(entry)
    text = Source(f"local:{text_weights}", True) if text_weights else family.text_source(entry)
    image = family.image_source(entry)
    return {"name": entry.name, "dim": entry.dim, "text": text.where, "image": image.where, "present": text.present and image.present}
