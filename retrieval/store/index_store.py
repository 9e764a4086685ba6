"""The index directory on disk: manifest, item catalog, float16 embeddings, FAISS index.

Every write makes a new *generation* of the three data files beside the old ones, then
swaps `manifest.json` (which names them) atomically, then deletes the old generation.
A reader that opens the manifest therefore always finds a consistent set, and a build
killed at any point leaves the previous index intact.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import faiss
import numpy as np

from retrieval.store import ann
from retrieval.store.atomic import atomic_write, atomic_write_text
from retrieval.errors import TusouError
from retrieval.store.faults import kill_point
from retrieval.models.registry import MODELS
from retrieval.store.index_types import INDEX_TYPES, KNOBS

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REBUILD = "rebuild it with `tusou index PATH --out DIR`"
ROLES = ("catalog", "embeddings", "faiss")
MANIFEST_FIELDS: dict[str, type] = {"model": dict, "dim": int, "count": int, "index": dict, "files": dict, "generation": int, "next_id": int}


def rebuild_hint(directory: Path) -> str:
    """What to do when the catalog, embeddings or manifest are bad: embed everything again.

    `tusou index` refuses a damaged index rather than guess which of its parts to trust,
    so the directory has to go first.
    """
    return f"delete {directory} and rebuild it with `tusou index PATH --out {directory}`"


def reindex_hint(directory: Path) -> str:
    """What to do when only the FAISS file is bad: the stored embeddings rebuild it, no model needed."""
    return f"its catalog and embeddings are intact: rebuild the FAISS file from them with `tusou reindex {directory}`"


def tool_version() -> str:
    try:
        return version("tusou")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class ImageRecord:
    """What a build learns about one image file."""

    path: str
    size: int
    mtime_ns: int
    sha256: str
    width: int
    height: int
    change_key: str | None = field(default=None, kw_only=True)
    """Beside size and mtime, what changes when the image does, for images that are not plain local
    files (a remote object's ETag, a tar member's shard's stamp). Written to the catalog only when
    set, so a catalog of local files reads exactly as before, in this tusou and in older ones."""

    @property
    def stamp(self) -> tuple[int, int, str | None]:
        return (self.size, self.mtime_ns, self.change_key)


@dataclass
class CatalogItem(ImageRecord):
    """One indexed image; `id` stays the same for as long as the file is in the index."""

    id: int


@dataclass
class Manifest:
    model: dict
    """name, fingerprint of its weights, and the local weight paths it was loaded from."""
    dim: int
    count: int
    index: dict
    """FAISS index: type, requested type and memory budget, build params, tuned search params."""
    files: dict[str, str]
    generation: int
    next_id: int
    metric: str = "inner_product"
    format_version: int = FORMAT_VERSION
    tool_version: str = field(default_factory=tool_version)
    created: str = ""
    updated: str = ""


@dataclass
class StoredIndex:
    directory: Path
    manifest: Manifest
    items: list[CatalogItem]
    embeddings: np.ndarray
    """float16, one row per catalog item, in catalog order (FAISS ids are row numbers)."""
    faiss_index: faiss.Index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, rows) per query row, with the search parameters the build tuned."""
        rerank = int(self.manifest.index.get("search", {}).get("rerank", 0))
        return ann.search(self.faiss_index, self.embeddings, queries, k, rerank)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
    version = raw.get("format_version", FORMAT_VERSION)
    if not _is_int(version) or version < 1:
        raise TusouError(f"{path} is damaged (format_version {version!r} is not a version number): {fix}")
    if version > FORMAT_VERSION:
        raise TusouError(
            f"{directory} was written by a newer tusou (index format {version}, "
            f"this one reads up to {FORMAT_VERSION}): upgrade tusou"
        )
    missing = [key for key in MANIFEST_FIELDS if key not in raw]
    if missing:
        raise TusouError(f"{path} is damaged (no {', '.join(missing)}): {fix}")
    unknown = sorted(set(raw) - {f.name for f in fields(Manifest)})
    if unknown:
        raise TusouError(f"{path} is damaged (unknown field {', '.join(unknown)}): {fix}")
    for key, kind in MANIFEST_FIELDS.items():
        # bool is an int to Python, not to a manifest; a wrong type would surface later as a traceback
        if not isinstance(raw[key], kind) or isinstance(raw[key], bool) or (kind is int and raw[key] < 0):
            raise TusouError(f"{path} is damaged ({key} is {raw[key]!r}): {fix}")
    if raw["dim"] < 1:
        raise TusouError(f"{path} is damaged (dim is {raw['dim']}): {fix}")
    if raw.get("metric", "inner_product") != "inner_product":
        raise TusouError(f"{path} is damaged (metric {raw['metric']!r}; tusou indexes use inner_product): {fix}")
    _check_files(directory, raw["files"], fix)
    _check_index_entry(path, raw["index"], fix)
    manifest = Manifest(**raw)
    _check_model_dim(directory, manifest, fix)
    return manifest


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
        if not _plain_name(name):
            raise TusouError(
                f"{directory / MANIFEST} is damaged: its {role} file {name!r} is not a file inside {directory} "
                f"(refused, not opened): {fix}"
            )


def _plain_name(name: object) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def _check_index_entry(path: Path, index: dict, fix: str) -> None:
    """The FAISS entry's type and search knobs (nprobe, ef_search, rerank) are what the search code expects."""
    if index.get("type") not in INDEX_TYPES:
        raise TusouError(f"{path} is damaged (index type {index.get('type')!r}, not one of {', '.join(INDEX_TYPES)}): {fix}")
    for key in ("params", "search"):
        if not isinstance(index.get(key, {}), dict):
            raise TusouError(f"{path} is damaged (index {key} is {index[key]!r}): {fix}")
    for key, value in index.get("search", {}).items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TusouError(f"{path} is damaged (search setting {key} is {value!r}): {fix}")
        if key in KNOBS and key != INDEX_TYPES[index["type"]].knob:
            raise TusouError(f"{path} is damaged (search setting {key} on a {index['type']} index): {fix}")


def _check_model_dim(directory: Path, manifest: Manifest, fix: str) -> None:
    """The manifest's model exists here and makes vectors of the manifest's dim.

    Checked from the registry alone, before any weights are loaded.
    """
    name = manifest.model.get("name")
    if not isinstance(name, str) or name not in MODELS:
        raise TusouError(
            f"{directory} names model {name!r}, which this tusou does not know ({', '.join(MODELS)}): "
            f"upgrade tusou, or {fix}"
        )
    if MODELS[name].dim != manifest.dim:
        raise TusouError(
            f"{directory / MANIFEST} is inconsistent (model {name} makes {MODELS[name].dim}-d vectors, "
            f"the manifest says {manifest.dim}-d): {fix}"
        )


def read_catalog(path: Path, fix: str = REBUILD) -> list[CatalogItem]:
    items = []
    try:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                try:
                    entry = json.loads(raw.decode("utf-8"))  # per line, so a bad byte names its line
                    items.append(CatalogItem(**entry) if isinstance(entry, dict) else _not_an_item(entry))
                except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
                    why = (
                        "cut short" if not raw.endswith(b"\n")
                        else "not UTF-8 text" if isinstance(exc, UnicodeDecodeError)
                        else "not JSON" if isinstance(exc, json.JSONDecodeError)
                        else str(exc)
                    )
                    raise TusouError(f"{path} line {number} is damaged ({why}): {fix}") from None
    except OSError as exc:
        raise TusouError(f"{path} cannot be read ({exc.strerror or exc}): {fix}") from None
    return items


def _not_an_item(entry: object) -> CatalogItem:
    raise TypeError(f"a JSON {type(entry).__name__}, not an object")


def data_paths(directory: Path, manifest: Manifest) -> dict[str, Path]:
    """The manifest's catalog, embeddings and FAISS files; a missing catalog or embeddings file is a
    one-line error (a missing FAISS file is `read_faiss`'s, which knows a reindex restores it)."""
    paths = {role: directory / manifest.files[role] for role in ROLES}
    for role in ("catalog", "embeddings"):
        if not paths[role].is_file():
            raise TusouError(f"{directory} is damaged: its {role} file {paths[role].name} is missing: {rebuild_hint(directory)}")
    return paths


def open_embeddings(path: Path, manifest: Manifest, fix: str = REBUILD) -> np.ndarray:
    """The stored float16 vectors, memory-mapped (an index of any size opens at once).

    allow_pickle=False: a .npy holding Python objects (or a pickle in disguise) is refused
    rather than unpickled.
    """
    try:
        embeddings = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        text = str(exc)
        why = (
            "empty" if isinstance(exc, EOFError) or path.stat().st_size == 0
            else "truncated" if "mmap length" in text
            else "holds pickled Python objects, not vectors; not loaded" if "pickle" in text or "Python objects" in text
            else "not a .npy array"
        )
        raise TusouError(f"{path} is damaged ({why}): {fix}") from None
    if not isinstance(embeddings, np.ndarray):  # np.load returns an NpzFile for a zip archive
        raise TusouError(f"{path} is damaged (not a .npy array): {fix}")
    if embeddings.dtype != np.float16 or embeddings.ndim != 2 or embeddings.shape[1] != manifest.dim:
        raise TusouError(
            f"{path} is damaged (its vectors are {embeddings.dtype} {' × '.join(map(str, embeddings.shape))}, "
            f"the manifest says float16 × {manifest.dim}): {fix}"
        )
    return embeddings


def open_vectors(directory: Path, manifest: Manifest) -> tuple[list[CatalogItem], np.ndarray]:
    """Catalog and embeddings, checked against each other and the manifest.

    These are what a reindex rebuilds the FAISS file from, so any fault here needs a full rebuild.
    """
    fix = rebuild_hint(directory)
    paths = data_paths(directory, manifest)
    items = read_catalog(paths["catalog"], fix)
    embeddings = open_embeddings(paths["embeddings"], manifest, fix)
    if not manifest.count == len(items) == len(embeddings):
        raise TusouError(
            f"{directory} is inconsistent (item counts: manifest {manifest.count}, catalog {len(items)}, "
            f"embeddings {len(embeddings)}): {fix}"
        )
    return items, embeddings


def read_faiss(directory: Path, manifest: Manifest, mmap: bool = False) -> faiss.Index:
    """The FAISS file, checked against the manifest; any fault points at `tusou reindex`.

    `mmap` maps the vectors instead of reading them (for `tusou info`: a check that costs
    nothing on a large index, and that bounds every size the file claims by its length).
    """
    path = directory / manifest.files["faiss"]
    fix = reindex_hint(directory)
    damaged = f"{directory} is damaged: its FAISS file {path.name}"
    if not path.is_file():
        raise TusouError(f"{damaged} is missing: {fix}")
    if path.stat().st_size == 0:
        raise TusouError(f"{damaged} is empty: {fix}")
    try:
        flags = getattr(faiss, "IO_FLAG_MMAP_IFC", 0) | faiss.IO_FLAG_READ_ONLY if mmap else 0
        index = faiss.read_index(str(path), flags)
    except (RuntimeError, MemoryError) as exc:
        why = "not a FAISS index" if "not recognized" in str(exc) else "truncated or corrupt"
        raise TusouError(f"{damaged} is {why}: {fix}") from None
    kind = type(faiss.downcast_index(index)).__name__
    expected = INDEX_TYPES[manifest.index["type"]].faiss_class
    if kind != expected:
        raise TusouError(f"{damaged} holds an {kind}, the manifest says {manifest.index['type']} ({expected}): {fix}")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise TusouError(f"{damaged} does not score by inner product: {fix}")
    if index.d != manifest.dim:
        raise TusouError(f"{damaged} holds {index.d}-d vectors, the index is {manifest.dim}-d: {fix}")
    if index.ntotal != manifest.count:
        raise TusouError(f"{damaged} holds {index.ntotal} vectors, the index has {manifest.count} items: {fix}")
    ann.apply_params(index, manifest.index.get("search", {}))
    return index


def open_index(directory: str | Path, mmap: bool = False) -> StoredIndex:
    """Read and cross-check an index directory; any inconsistency is a one-line TusouError.

    Catalog and embeddings are checked before the FAISS file, so a fault only the FAISS file
    has gets the cheap fix (`tusou reindex`) and every other one a rebuild.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    items, embeddings = open_vectors(directory, manifest)
    faiss_index = read_faiss(directory, manifest, mmap)
    return StoredIndex(directory, manifest, items, embeddings, faiss_index)


GENERATION_FILE = re.compile(r"(catalog\.\d+\.jsonl|embeddings\.\d+\.npy|index\.\d+\.faiss)")
TEMPORARY_FILE = re.compile(r"\..+\.tmp-\d+")


def remove_leftovers(directory: Path) -> list[str]:
    """Delete what a killed writer left: temporary files, and generation files no manifest names.

    Only for a writer holding the build lock. Returns the names removed.
    """
    manifest = read_manifest(directory) if (directory / MANIFEST).is_file() else None
    named = set(manifest.files.values()) if manifest else set()
    removed = []
    for folder in (directory, directory / "staging"):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            stale_generation = folder == directory and GENERATION_FILE.fullmatch(path.name) and path.name not in named
            if path.is_file() and (TEMPORARY_FILE.fullmatch(path.name) or stale_generation):
                path.unlink(missing_ok=True)
                removed.append(path.name)
    return removed


def write_index(
    directory: Path,
    *,
    model: dict,
    items: list[CatalogItem] | None,
    embeddings: np.ndarray | None,
    faiss_index: faiss.Index,
    index_info: dict,
    previous: Manifest | None,
) -> Manifest:
    """Write a new generation and switch the manifest to it; returns the new manifest.

    `items` and `embeddings` None keep the previous generation's catalog and embeddings
    (a reindex): only the FAISS file is new.
    """
    keep = items is None or embeddings is None
    if keep and previous is None:
        raise ValueError("only an existing index can keep its catalog and embeddings")
    count = previous.count if keep else len(items)
    if not (keep or len(items) == len(embeddings)) or faiss_index.ntotal != count:
        raise ValueError("catalog, embeddings and FAISS index must have one row per item")
    directory.mkdir(parents=True, exist_ok=True)
    generation = next_generation(previous)
    files = {
        "catalog": previous.files["catalog"] if keep else f"catalog.{generation}.jsonl",
        "embeddings": previous.files["embeddings"] if keep else embeddings_name(generation),
        "faiss": f"index.{generation}.faiss",
    }
    if not keep:
        catalog_text = "".join(json.dumps(_catalog_entry(item)) + "\n" for item in items)
        atomic_write_text(directory / files["catalog"], catalog_text)
        if not _is_file_of(embeddings, directory / files["embeddings"]):
            write_embeddings(directory, generation, embeddings.shape, lambda out: np.copyto(out, embeddings, casting="same_kind"))
    atomic_write(directory / files["faiss"], lambda tmp: faiss.write_index(faiss_index, str(tmp)))
    now = _now()
    manifest = Manifest(
        model=model,
        dim=previous.dim if keep else int(embeddings.shape[1]),
        count=count,
        index=index_info,
        files=files,
        generation=generation,
        next_id=max([previous.next_id if previous else 0] + [item.id + 1 for item in items or []]),
        created=previous.created if previous else now,
        updated=now,
    )
    atomic_write_text(directory / MANIFEST, json.dumps(asdict(manifest), ensure_ascii=False, indent=2) + "\n")
    if previous:
        for name in previous.files.values():
            if name not in files.values() and _plain_name(name):  # never a path outside the directory
                (directory / name).unlink(missing_ok=True)
                kill_point("cleanup")
    return manifest


def next_generation(previous: Manifest | None) -> int:
    return previous.generation + 1 if previous else 1


def embeddings_name(generation: int) -> str:
    return f"embeddings.{generation}.npy"


def write_embeddings(directory: Path, generation: int, shape: tuple[int, int], fill: Callable[[np.ndarray], None]) -> np.ndarray:
    """Write a generation's float16 embeddings file through `fill(out)`, which may fill `out` a block
    at a time, so no more of the vectors than a block is ever in memory; returns the file mapped
    read-only, ready for the FAISS build and for `write_index`.

    Until a manifest names it, the file is a leftover that the next build sweeps away.
    """
    path = directory / embeddings_name(generation)

    def write(tmp: Path) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
        fill(out)
        out.flush()
        del out

    atomic_write(path, write)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _is_file_of(array: np.ndarray, path: Path) -> bool:
    """Whether `array` is the memory map of `path` (written by write_embeddings already)."""
    return isinstance(array, np.memmap) and array.filename is not None and Path(array.filename) == path.resolve()


def _catalog_entry(item: CatalogItem) -> dict:
    entry = asdict(item)
    if entry["change_key"] is None:
        del entry["change_key"]
    return entry


def check_model(manifest: Manifest, directory: Path, name: str, fingerprint: str | None = None) -> None:
    """An index answers only queries embedded by the model that built it (None: check the name only)."""
    built = manifest.model
    if built.get("name") != name:
        raise TusouError(
            f"{directory} was built with model {built.get('name')!r}, not {name!r}: "
            f"use --model {built.get('name')} or another --out directory"
        )
    if fingerprint is not None and built.get("fingerprint") != fingerprint:
        raise TusouError(
            f"{directory} was built with other weights of {name!r} (fingerprint {built.get('fingerprint')}, "
            f"these are {fingerprint}): load the same weights or build a new index"
        )
