"""Writing a segment's files and a deletion record, before the catalog transaction that names them.

Every file is written beside the others under a new name, atomically; until a commit names it, a
file is a leftover that the next build (under the lock) sweeps away. So a writer killed at any
point leaves the index as its last commit left it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from indexer.faiss_build import index_embeddings
from retrieval.store.arrays import write_array, write_faiss, write_vectors
from retrieval.store.atomic import TEMPORARY_FILE, fsync_dir
from retrieval.store.catalog import SEGMENTS_DIR, SegmentRow
from retrieval.store.faults import kill_point

SEGMENT_FILE = re.compile(r"\d{6}\.(vectors\.npy|ids\.npy|faiss|deleted\.\d{6}\.npy)")
"""The name of a segment's file in segments/ (segment_files, deletion_file)."""


def segment_files(segment_id: int) -> dict[str, str]:
    """A segment's file names, relative to the index directory."""
    stem = f"{SEGMENTS_DIR}/{segment_id:06d}"
    return {"vectors": f"{stem}.vectors.npy", "ids": f"{stem}.ids.npy", "faiss": f"{stem}.faiss"}


def deletion_file(segment_id: int, generation: int) -> str:
    return f"{SEGMENTS_DIR}/{segment_id:06d}.deleted.{generation:06d}.npy"


def write_segment(
    directory: Path,
    segment_id: int,
    ids: np.ndarray,
    dim: int,
    fill: Callable[[np.ndarray], None],
    index_type: str,
    max_memory: int | None,
    progress: bool = False,
) -> SegmentRow:
    """A new segment of `len(ids)` rows: `fill(out)` writes its float16 vectors (a block at a time if it
    likes), then its FAISS index of `index_type` is built from them mapped, trained and tuned."""
    (directory / SEGMENTS_DIR).mkdir(parents=True, exist_ok=True)
    files = segment_files(segment_id)
    vectors = write_vectors(directory / files["vectors"], (len(ids), dim), fill)
    write_array(directory / files["ids"], np.asarray(ids, dtype=np.int64))
    faiss_index, entry = index_embeddings(vectors, index_type, max_memory, progress)
    write_faiss(directory / files["faiss"], faiss_index)
    fsync_dir(directory / SEGMENTS_DIR)
    kill_point("segment")
    return SegmentRow(segment_id, len(ids), 0, files, entry)


def write_deletions(directory: Path, segment: SegmentRow, rows: np.ndarray, generation: int) -> SegmentRow:
    """`segment` with `rows` deleted too: a new deletion record holding every deleted row so far."""
    old = np.load(directory / segment.files["deleted"]) if "deleted" in segment.files else np.empty(0, np.int64)
    deleted = np.union1d(old, np.asarray(rows, dtype=np.int64))
    name = deletion_file(segment.id, generation)
    write_array(directory / name, deleted)
    fsync_dir(directory / SEGMENTS_DIR)
    kill_point("deletion")
    return SegmentRow(segment.id, segment.count, len(deleted), {**segment.files, "deleted": name}, segment.index_entry)


def remove_unnamed(directory: Path, segments: Iterable[SegmentRow]) -> list[str]:
    """Delete every segment file in segments/ that none of `segments` (the catalog's rows, as committed) names:
    a killed writer's files, temporary files, merged-away segments, superseded deletion records.
    Only under the build lock. Returns the names removed."""
    folder = directory / SEGMENTS_DIR
    if not folder.is_dir():
        return []
    named = {Path(name).name for segment in segments for name in segment.files.values()}
    ours = lambda name: SEGMENT_FILE.fullmatch(name) or TEMPORARY_FILE.fullmatch(name)  # noqa: E731  (anything else is not ours to delete)
    removed = sorted(path.name for path in folder.iterdir() if path.name not in named and path.is_file() and ours(path.name))
    for name in removed:
        (folder / name).unlink(missing_ok=True)
    return removed
