"""What an index is, for people: `tusou info`, the UI's header and the build's last line."""

from __future__ import annotations

from pathlib import Path

from retrieval.store.index_store import Manifest, open_index
from retrieval.store.manifest import IndexEntry


def describe(manifest: Manifest) -> str:
    """One line: type, its tuned search setting and the recall measured against exact search."""
    return describe_entry(manifest.index)


def describe_entry(index: IndexEntry) -> str:
    """describe() of one FAISS index entry (a segment's)."""
    search = index.search
    knobs = ", ".join(f"{key} {value}" for key, value in {**index.params, **search}.items() if key not in ("recall_at_10", "tuning_queries"))
    recall = "exact" if index.type == "flat" else f"recall@10 {search.get('recall_at_10', float('nan')):.3f} vs exact"
    chosen = " (auto)" if index.requested == "auto" else ""
    return f"{index.type}{chosen}" + (f" [{knobs}]" if knobs else "") + f", {recall}"


def summary(directory: str | Path) -> dict:
    """The manifest's facts and the files' sizes on disk.

    The whole index is checked first (the FAISS file memory-mapped, so this stays cheap): `info`
    must not report a healthy index that `search` would then refuse.
    """
    directory = Path(directory)
    manifest = open_index(directory, mmap=True).manifest
    sizes = {role: (directory / name).stat().st_size if (directory / name).is_file() else None for role, name in manifest.files.items()}
    return {
        "index": str(directory),
        "count": manifest.count,
        "dim": manifest.dim,
        "model": manifest.model.to_dict(),
        "index_type": manifest.index.to_dict(),
        "description": describe(manifest),
        "bytes_on_disk": sizes,
        "generation": manifest.generation,
        "format_version": manifest.format_version,
        "tool_version": manifest.tool_version,
        "created": manifest.created,
        "updated": manifest.updated,
    }
