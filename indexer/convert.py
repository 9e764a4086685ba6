"""Converting a format-1 index (one generation: JSONL catalog, embeddings, FAISS file) to the
segment store in place, without re-embedding anything.

The old embeddings and FAISS file become segment 1 as they are (hard links where the file system
allows, else copies), beside an ids file; catalog.sqlite gets the items, with what each local
image's header says about it (EXIF time, camera, place, format), read without decoding pixels.
Until the format-2 manifest replaces the old one in one rename, the old files are the index
and everything new is a leftover the next writer sweeps away; after it, the old files are.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from indexer import space
from indexer.commit import put_settings
from indexer.metadata import read_metadata
from indexer.segment_writer import segment_files
from indexer.sources import SCAN_THREADS, SCAN_WINDOW
from retrieval.locations import is_url, split_member
from retrieval.store.arrays import write_array
from retrieval.store.atomic import atomic_write, fsync_dir
from retrieval.store.catalog import SEGMENTS_DIR, Catalog, SegmentRow, item_values, put_items, put_segment
from retrieval.store.faults import kill_point
from retrieval.store.index_store import open_vectors, read_faiss
from retrieval.store.manifest import FORMAT_VERSION, Manifest, read_manifest, tool_version, write_manifest
from retrieval.store.records import CatalogItem
from retrieval.store.store import CATALOG


def convert(directory: Path, progress: bool = True, check_faiss: bool = True) -> bool:
    """Convert the index at `directory` if it is of format 1; returns whether it was.

    For a writer holding the build lock, after indexer.leftovers.remove_leftovers. The catalog and
    embeddings are checked first (damage refuses, changing nothing), and the FAISS file too unless
    `check_faiss` is False: a reindex, which rebuilds it from the vectors, converts an index whose
    FAISS file is damaged or missing.
    """
    manifest = read_manifest(directory)
    if manifest.segmented:
        return False
    items, _ = open_vectors(directory, manifest)
    if check_faiss:
        read_faiss(directory, manifest, mmap=True)
    space.expect(8 * len(items) + space.sqlite_bytes(len(items), space.path_bytes(item.path for item in items)))
    segment = _segment(directory, manifest, items)
    catalog = Catalog(directory / CATALOG, create=True)
    try:
        with catalog.transaction() as db:
            put_items(db, (item_values(item, 1, row) for row, item in enumerate(_with_metadata(items, progress))))
            put_segment(db, segment)
            index = manifest.index
            layout = {"requested": index.requested or "auto", "max_memory": index.max_memory}
            put_settings(db, {"next_id": manifest.next_id, "next_segment": 2, "generation": manifest.generation,
                              "updated": manifest.updated, "layout": layout})
    finally:
        catalog.close()
    kill_point("convert")
    write_manifest(directory, replace(manifest, format_version=FORMAT_VERSION, tool_version=tool_version()))
    for name in manifest.files.values():
        (directory / name).unlink(missing_ok=True)
        kill_point("cleanup")
    if progress:
        print(f"tusou: converted {directory} to index format {FORMAT_VERSION} (segments and a SQLite catalog), "
              f"{len(items)} images, nothing re-embedded", file=sys.stderr, flush=True)
    return True


def _segment(directory: Path, manifest: Manifest, items: list[CatalogItem]) -> SegmentRow:
    """Segment 1: the old embeddings and FAISS file under the segment's names, and its ids."""
    (directory / SEGMENTS_DIR).mkdir(exist_ok=True)
    files = segment_files(1)
    _link(directory / manifest.files["embeddings"], directory / files["vectors"])
    if (directory / manifest.files["faiss"]).is_file():  # else (a reindex converting) the reindex writes it
        _link(directory / manifest.files["faiss"], directory / files["faiss"])
    write_array(directory / files["ids"], np.array([item.id for item in items], dtype=np.int64))
    fsync_dir(directory / SEGMENTS_DIR)
    return SegmentRow(1, len(items), 0, files, manifest.index)


def _link(source: Path, target: Path) -> None:
    """`target` names the bytes of `source`: a hard link (no byte copied), else an atomic copy."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links, or a file owned by another user under protected_hardlinks
        atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))


def _with_metadata(items: list[CatalogItem], progress: bool) -> Iterator[CatalogItem]:
    """The items, each with its image's header metadata, read SCAN_THREADS files at a time."""
    with ThreadPoolExecutor(SCAN_THREADS, thread_name_prefix="headers") as pool, tqdm(
        total=len(items), desc="reading image headers", unit=" images", disable=not progress, leave=False
    ) as bar:
        for start in range(0, len(items), SCAN_WINDOW):
            for item in pool.map(_item_metadata, items[start : start + SCAN_WINDOW]):
                bar.update()
                yield item


def _item_metadata(item: CatalogItem) -> CatalogItem:
    """A local image's EXIF fields and format from its header; a tar member or URL, or a file that
    is gone or unreadable now, keeps none (its next change reads them as it is embedded)."""
    if is_url(item.path) or split_member(item.path) is not None:
        return item
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a decompression-bomb warning, say: no pixel is decoded here
            with Image.open(item.path) as image:
                return replace(item, **asdict(read_metadata(image)))
    except Exception:  # Pillow raises many types for files it cannot identify; it is only metadata
        return item
