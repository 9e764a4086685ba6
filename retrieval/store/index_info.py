"""What an index is, for people: `tusou info`, the UI's header and the build's last line.

Answered from the manifest and the catalog's segments table: no item row is read, so it costs
the same at any size (a format-1 index, which has no such table, is read as it always was).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from retrieval.store.catalog import SegmentRow
from retrieval.store.manifest import MANIFEST, IndexEntry
from retrieval.store.segment import check_segments
from retrieval.store.store import CATALOG, Store, open_store


def describe(index: IndexEntry) -> str:
    """One line: type, its tuned search setting and the recall measured against exact search."""
    search = index.search
    knobs = ", ".join(f"{key} {value}" for key, value in {**index.params, **search}.items() if key not in ("recall_at_10", "tuning_queries"))
    recall = "exact" if index.type == "flat" else f"recall@10 {search.get('recall_at_10', float('nan')):.3f} vs exact"
    chosen = " (auto)" if index.requested == "auto" else ""
    return f"{index.type}{chosen}" + (f" [{knobs}]" if knobs else "") + f", {recall}"


def describe_segments(rows: list[SegmentRow]) -> str:
    """The index's search in one line: each kind of segment (type and tuned search) with its live rows."""
    if len(rows) == 1:
        return describe(rows[0].index_entry)
    if not rows:
        return "no segments"
    kinds: Counter[str] = Counter()
    live: Counter[str] = Counter()
    for row in rows:
        kinds[describe(row.index_entry)] += 1
        live[describe(row.index_entry)] += row.live
    parts = [f"{live[kind]:,} in {count} × {kind}" if count > 1 else f"{live[kind]:,} in {kind}" for kind, count in kinds.items()]
    return f"{len(rows)} segments: " + "; ".join(parts)


def summary(directory: str | Path) -> dict:
    """The manifest's identity, the catalog's counts and every file's size on disk.

    Every segment is checked first (its FAISS file mapped, so this stays cheap): `info` must not
    report a healthy index that `search` would then refuse.
    """
    directory = Path(directory)
    store = open_store(directory)
    try:
        state = _state(store)
        if store.manifest.segmented:
            check_segments(store.directory, state[0], store.manifest.dim)
    finally:
        store.close()
    return _summary(store, *state)


def served_summary(store: Store) -> dict:
    """`summary` of an open store as its current view has it, for a server answering beside a writer:
    the view's segments were checked when it opened them, and the rows, generation and update time
    are one commit's (read in one snapshot at the view's generation; a commit in between reads them
    again), so the counts agree with what a search of that view finds."""
    while True:
        view = store.view()
        state = _state(store)
        if not store.manifest.segmented or state[2] == view.generation:
            return _summary(store, *state)


def _summary(store: Store, rows: list[SegmentRow], files: dict[str, list[str]], generation: int, updated: str, layout: dict) -> dict:
    directory, manifest = store.directory, store.manifest
    biggest = max(rows, key=lambda row: row.live, default=None)
    return {
        "index": str(directory),
        "count": sum(row.live for row in rows),
        "dim": manifest.dim,
        "model": manifest.model.to_dict(),
        "index_type": biggest.index_entry.to_dict() if biggest else None,  # a one-segment index's entry, as it always was
        "layout": layout,
        "description": describe_segments(rows),
        "segments": [_segment(directory, row) for row in rows],
        "bytes_on_disk": {role: sum(_size(directory / name) for name in names) for role, names in files.items()},
        "generation": generation,
        "format_version": manifest.format_version,
        "tool_version": manifest.tool_version,
        "created": manifest.created,
        "updated": updated,
    }


def _state(store: Store) -> tuple[list[SegmentRow], dict[str, list[str]], int, str, dict]:
    """The segment rows, the files by role, generation, last change and layout, of one commit."""
    manifest, catalog = store.manifest, store.catalog
    if not manifest.segmented:  # one segment, opened (and so checked) when the store was
        entry = manifest.index
        row = SegmentRow(1, manifest.count, 0, dict(manifest.files), entry)
        layout = {"requested": entry.requested or "auto", "max_memory": entry.max_memory}
        return [row], {role: [name] for role, name in manifest.files.items()}, manifest.generation, manifest.updated, layout
    with catalog.snapshot() as db:
        rows = catalog.segments(db)
        generation, updated, layout = (catalog.setting(key, default, db) for key, default in (("generation", 0), ("updated", ""), ("layout", {})))
    files: dict[str, list[str]] = {"manifest": [MANIFEST], "catalog": [CATALOG, f"{CATALOG}-wal"]}
    for row in rows:
        for role, name in row.files.items():
            files.setdefault(role, []).append(name)
    return rows, files, int(generation), str(updated), layout


def _segment(directory: Path, row: SegmentRow) -> dict:
    entry = row.index_entry
    return {
        "id": row.id, "type": entry.type, "rows": row.count, "deleted": row.deleted, "live": row.live,
        "recall_at_10": entry.search.get("recall_at_10", 1.0), "bytes": sum(_size(directory / name) for name in row.files.values()),
    }


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0
