"""The index directory on disk: manifest, item catalog, float16 embeddings, FAISS index.

Every write makes a new *generation* of the three data files beside the old ones, then
swaps `manifest.json` (which names them) atomically, then deletes the old generation.
A reader that opens the manifest therefore always finds a consistent set, and a build
killed at any point leaves the previous index intact.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import faiss
import numpy as np

from retrieval import ann
from retrieval.atomic import atomic_write, atomic_write_text
from retrieval.errors import TusouError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REBUILD = "rebuild it with `tusou index PATH --out DIR`"


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
    path = directory / MANIFEST
    if not directory.is_dir():
        raise TusouError(f"no index at {directory}: build one with `tusou index PATH --out {directory}`")
    if not path.is_file():
        raise TusouError(f"{directory} is not a tusou index (no {MANIFEST}): build one with `tusou index PATH --out DIR`")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TusouError(f"{path} is damaged ({exc}): {REBUILD}") from None
    if not isinstance(raw, dict):
        raise TusouError(f"{path} is damaged (not a JSON object): {REBUILD}")
    if isinstance(raw.get("format_version"), int) and raw["format_version"] > FORMAT_VERSION:
        raise TusouError(
            f"{directory} was written by a newer tusou (index format {raw['format_version']}, "
            f"this one reads up to {FORMAT_VERSION}): upgrade tusou"
        )
    try:
        return Manifest(**raw)
    except TypeError as exc:
        raise TusouError(f"{path} is damaged ({exc}): {REBUILD}") from None


def read_catalog(path: Path) -> list[CatalogItem]:
    items = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                items.append(CatalogItem(**json.loads(line)))
            except (json.JSONDecodeError, TypeError) as exc:
                raise TusouError(f"{path} line {number} is damaged ({exc}): {REBUILD}") from None
    return items


def data_paths(directory: Path, manifest: Manifest) -> dict[str, Path]:
    """The manifest's catalog, embeddings and FAISS files; a missing one is a one-line error."""
    paths = {role: directory / name for role, name in manifest.files.items()}
    for role in ("catalog", "embeddings", "faiss"):
        if role not in paths or not paths[role].is_file():
            raise TusouError(f"{directory} is damaged: its {role} file is missing: {REBUILD}")
    return paths


def open_embeddings(path: Path, manifest: Manifest) -> np.ndarray:
    """The stored float16 vectors, memory-mapped (an index of any size opens at once)."""
    try:
        embeddings = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise TusouError(f"{path} is damaged ({exc}): {REBUILD}") from None
    if embeddings.ndim != 2 or embeddings.shape != (manifest.count, manifest.dim):
        raise TusouError(
            f"{path.parent} is inconsistent (embeddings are {embeddings.shape}, the manifest says "
            f"{manifest.count} × {manifest.dim}): {REBUILD}"
        )
    return embeddings


def open_index(directory: str | Path) -> StoredIndex:
    """Read and cross-check an index directory; any inconsistency is a one-line TusouError."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    paths = data_paths(directory, manifest)
    items = read_catalog(paths["catalog"])
    embeddings = open_embeddings(paths["embeddings"], manifest)
    try:
        faiss_index = faiss.read_index(str(paths["faiss"]))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise TusouError(f"{paths['faiss']} is damaged ({reason}): {REBUILD}") from None
    counts = {"manifest": manifest.count, "catalog": len(items), "faiss": faiss_index.ntotal}
    if len(set(counts.values())) != 1:
        listed = ", ".join(f"{k} {v}" for k, v in counts.items())
        raise TusouError(f"{directory} is inconsistent (item counts: {listed}): {REBUILD}")
    if faiss_index.d != manifest.dim:
        raise TusouError(f"{directory} is inconsistent (its FAISS index is not {manifest.dim}-d): {REBUILD}")
    ann.apply_params(faiss_index, manifest.index.get("search", {}))
    return StoredIndex(directory, manifest, items, embeddings, faiss_index)


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
    generation = previous.generation + 1 if previous else 1
    files = {
        "catalog": previous.files["catalog"] if keep else f"catalog.{generation}.jsonl",
        "embeddings": previous.files["embeddings"] if keep else f"embeddings.{generation}.npy",
        "faiss": f"index.{generation}.faiss",
    }
    if not keep:
        catalog_text = "".join(json.dumps(asdict(item)) + "\n" for item in items)
        atomic_write_text(directory / files["catalog"], catalog_text)
        atomic_write(directory / files["embeddings"], lambda tmp: _save_npy(tmp, embeddings.astype(np.float16)))
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
            if name not in files.values():
                (directory / name).unlink(missing_ok=True)
    return manifest


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)


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
