"""An index's manifest: what it holds, which model made its vectors, which files are its current generation.

Read field by field, so a damaged or foreign manifest is one line naming the fix, never a
traceback later. Written as JSON in the same shape as ever: a manifest of an older tusou opens
unchanged. Imports neither FAISS nor torch, so reading a manifest is cheap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from retrieval.errors import TusouError
from retrieval.models.registry import MODELS
from retrieval.store.atomic import atomic_write_text
from retrieval.store.index_types import CHOICES, INDEX_TYPES, KNOBS
from retrieval.store.model_ref import ModelRef

FORMAT_VERSION = 2
"""1: one generation of files named here (JSONL catalog, embeddings, FAISS), swapped by rewriting
the manifest. 2: segments named by catalog.sqlite, which is the commit point; the manifest only
says what the index is (retrieval.store.store)."""
SEGMENTS = 2
MANIFEST = "manifest.json"
ROLES = ("catalog", "embeddings", "faiss")
IDENTITY_FIELDS: dict[str, type] = {"model": dict, "dim": int}
GENERATION_FIELDS: dict[str, type] = {"count": int, "index": dict, "files": dict, "generation": int, "next_id": int}
"""What a format-1 manifest holds beside the identity: its one generation of files."""


def rebuild_hint(directory: Path) -> str:
    """What to do when the catalog, embeddings or manifest are bad: embed everything again.

    `tusou index` refuses a damaged index rather than guess which of its parts to trust,
    so the directory has to go first.
    """
    return f"delete {directory} and rebuild it with `tusou index PATH --out {directory}`"


def tool_version() -> str:
    try:
        return version("tusou")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class IndexEntry:
    """The manifest's `index` entry: the FAISS index's type, what was asked for, how it was built and tuned."""

    type: str
    requested: str | None = None
    """The type asked for (`auto` or one of INDEX_TYPES); None in indexes older than index types."""
    max_memory: int | None = None
    """The memory budget asked for, in bytes; None: the default (half of RAM)."""
    params: dict[str, int] = field(default_factory=dict)
    """Build parameters (nlist, M, ...)."""
    search: dict[str, float] = field(default_factory=dict)
    """Tuned search settings (nprobe, ef_search, rerank) and the recall measured with them."""
    bytes: int | None = None
    """The planned size in memory."""

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Manifest:
    model: ModelRef
    dim: int
    count: int = 0
    index: IndexEntry | None = None
    files: dict[str, str] = field(default_factory=dict)
    generation: int = 0
    next_id: int = 0
    """count … next_id: a format-1 index's generation; a format-2 index keeps them in its catalog."""
    metric: str = "inner_product"
    format_version: int = FORMAT_VERSION
    tool_version: str = field(default_factory=tool_version)
    created: str = ""
    updated: str = ""

    @property
    def segmented(self) -> bool:
        return self.format_version >= SEGMENTS

    def to_dict(self) -> dict:
        """The JSON object of manifest.json (a format-2 one without the generation fields, nor
        `updated`: its catalog says when it last changed)."""
        entries = {"model": self.model.to_dict(), "index": self.index.to_dict() if self.index else None}
        names = [f.name for f in fields(self) if not (self.segmented and (f.name in GENERATION_FIELDS or f.name == "updated"))]
        return {name: entries.get(name, getattr(self, name)) for name in names}


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Switch the index to `manifest` in one atomic rename."""
    atomic_write_text(directory / MANIFEST, json.dumps(manifest.to_dict(), ensure_ascii=False, indent=2) + "\n")


def read_manifest(directory: Path) -> Manifest:
    """The manifest, checked field by field: a damaged or foreign one is a one-line TusouError."""
    path = directory / MANIFEST
    if not directory.is_dir():
        raise TusouError(f"no index at {directory}: build one with `tusou index PATH --out {directory}`")
    if not path.is_file():
        raise TusouError(f"{directory} is not a tusou index (no {MANIFEST}): build one with `tusou index PATH --out DIR`")
    fix = rebuild_hint(directory)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TusouError(f"{path} is damaged ({exc}): {fix}") from None
    if not isinstance(raw, dict):
        raise TusouError(f"{path} is damaged (not a JSON object): {fix}")
    version = _check_version(directory, raw, fix)
    _check_fields(path, raw, fix, IDENTITY_FIELDS | (GENERATION_FIELDS if version < SEGMENTS else {}))
    if version < SEGMENTS:
        _check_files(directory, raw["files"], fix)
        check_index_entry(path, raw["index"], fix)
    _check_model_entry(path, raw["model"], fix)
    model = ModelRef(**{"name": None, **raw["model"]})  # a nameless one is refused by _check_model_dim
    index = IndexEntry(**raw["index"]) if version < SEGMENTS else None
    manifest = Manifest(**{"format_version": 1, **raw, "model": model, "index": index})
    _check_model_dim(directory, manifest, fix)
    return manifest


def _check_version(directory: Path, raw: dict, fix: str) -> int:
    version = raw.get("format_version", 1)
    if not _is_int(version) or version < 1:
        raise TusouError(f"{directory / MANIFEST} is damaged (format_version {version!r} is not a version number): {fix}")
    if version > FORMAT_VERSION:
        raise TusouError(
            f"{directory} was written by a newer tusou (index format {version}, "
            f"this one reads up to {FORMAT_VERSION}): upgrade tusou"
        )
    return version


def _check_fields(path: Path, raw: dict, fix: str, required: dict[str, type]) -> None:
    """Every `required` field there, none unknown, each of its type."""
    missing = [key for key in required if key not in raw]
    if missing:
        raise TusouError(f"{path} is damaged (no {', '.join(missing)}): {fix}")
    unknown = sorted(set(raw) - {f.name for f in fields(Manifest)})
    if unknown:
        raise TusouError(f"{path} is damaged (unknown field {', '.join(unknown)}): {fix}")
    for key, kind in required.items():
        # bool is an int to Python, not to a manifest; a wrong type would surface later as a traceback
        if not isinstance(raw[key], kind) or isinstance(raw[key], bool) or (kind is int and raw[key] < 0):
            raise TusouError(f"{path} is damaged ({key} is {raw[key]!r}): {fix}")
    if raw["dim"] < 1:
        raise TusouError(f"{path} is damaged (dim is {raw['dim']}): {fix}")
    if raw.get("metric", "inner_product") != "inner_product":
        raise TusouError(f"{path} is damaged (metric {raw['metric']!r}; tusou indexes use inner_product): {fix}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_files(directory: Path, files: dict, fix: str) -> None:
    """Each data file is a plain name inside the directory.

    A manifest naming `../../etc/passwd` or an absolute path must never make tusou read it,
    nor make a later build delete it as an "old generation".
    """
    for role in ROLES:
        name = files.get(role)
        if not isinstance(name, str) or not name:
            raise TusouError(f"{directory / MANIFEST} is damaged (no {role} file named): {fix}")
    for role, name in files.items():
        if not plain_name(name):
            raise TusouError(
                f"{directory / MANIFEST} is damaged: its {role} file {name!r} is not a file inside {directory} "
                f"(refused, not opened): {fix}"
            )


def plain_name(name: object) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def check_index_entry(path: Path, index: object, fix: str) -> None:
    """The FAISS entry's fields are IndexEntry's, and its type and search knobs (nprobe, ef_search,
    rerank) are what the search code expects."""
    if not isinstance(index, dict):
        raise TusouError(f"{path} is damaged (index entry {index!r} is not an object): {fix}")
    unknown = sorted(set(index) - {f.name for f in fields(IndexEntry)})
    if unknown:
        raise TusouError(f"{path} is damaged (unknown index field {', '.join(unknown)}): {fix}")
    if index.get("type") not in INDEX_TYPES:
        raise TusouError(f"{path} is damaged (index type {index.get('type')!r}, not one of {', '.join(INDEX_TYPES)}): {fix}")
    if index.get("requested") not in (None, *CHOICES):
        raise TusouError(f"{path} is damaged (requested index type {index['requested']!r}): {fix}")
    for key in ("max_memory", "bytes"):
        if index.get(key) is not None and (not _is_int(index[key]) or index[key] < 0):
            raise TusouError(f"{path} is damaged (index {key} is {index[key]!r}): {fix}")
    for key in ("params", "search"):
        if not isinstance(index.get(key, {}), dict):
            raise TusouError(f"{path} is damaged (index {key} is {index[key]!r}): {fix}")
    for key, value in index.get("search", {}).items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TusouError(f"{path} is damaged (search setting {key} is {value!r}): {fix}")
        if key in KNOBS and key != INDEX_TYPES[index["type"]].knob:
            raise TusouError(f"{path} is damaged (search setting {key} on a {index['type']} index): {fix}")


def _check_model_entry(path: Path, model: dict, fix: str) -> None:
    """The model entry's fields are ModelRef's, each a string (or null where a weight source may be
    the registry's own); without a fingerprint, no loaded model could be checked against it."""
    unknown = sorted(set(model) - {f.name for f in fields(ModelRef)})
    if unknown:
        raise TusouError(f"{path} is damaged (unknown model field {', '.join(unknown)}): {fix}")
    if not isinstance(model.get("fingerprint"), str):
        raise TusouError(f"{path} is damaged (model fingerprint is {model.get('fingerprint')!r}): {fix}")
    for key, value in model.items():
        if key != "name" and value is not None and not isinstance(value, str):
            raise TusouError(f"{path} is damaged (model {key} is {value!r}): {fix}")


def _check_model_dim(directory: Path, manifest: Manifest, fix: str) -> None:
    """The manifest's model exists here and makes vectors of the manifest's dim.

    Checked from the registry alone, before any weights are loaded.
    """
    name = manifest.model.name
    if not isinstance(name, str) or name not in MODELS:
        raise TusouError(
            f"{directory} names model {name!r}, which this tusou does not know ({', '.join(n for n, e in MODELS.items() if e.teacher is None)}): "
            f"upgrade tusou, or {fix}"
        )
    if MODELS[name].dim != manifest.dim:
        raise TusouError(
            f"{directory / MANIFEST} is inconsistent (model {name} makes {MODELS[name].dim}-d vectors, "
            f"the manifest says {manifest.dim}-d): {fix}"
        )


def check_model(manifest: Manifest, directory: Path, name: str) -> None:
    """An index answers only queries embedded by the model that built it, or by a student of that model
    (which shares its image tower): the name, checked before any weights load (ModelRef.verify checks
    the weights)."""
    from retrieval.models.registry import resolve_model

    built, entry = manifest.model.name, resolve_model(name).entry
    if entry.teacher is not None and entry.teacher != built:
        raise TusouError(f"{directory} was built with model {built!r}, and {name} is a student of {entry.teacher!r}: "
                         f"use a student of {built}, or {built} itself")
    if built not in (entry.name, entry.teacher):
        raise TusouError(f"{directory} was built with model {built!r}, not {name!r}: use --model {built} or another --out directory")
