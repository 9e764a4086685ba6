"""An index build: scan, embed what is new or changed, write a new generation.

The index mirrors the given paths: images that appeared are added, images whose stamp
(size, mtime, change key: indexer.sources) changed are re-embedded, images that are gone
are dropped. Embeddings are staged in chunks as they are made, so an interrupted build
resumes where it stopped.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from indexer.decode import Unit, decoded_batches, units_of
from indexer.faiss_build import index_embeddings
from indexer.ray_engine import RayOptions, WorkerModel, embed_on_ray, ray_session
from indexer.sources import Skipped, SourceFile, describe_extensions, scan
from indexer.staging import Staging
from retrieval.models.devices import compute_dtype
from retrieval.errors import TusouError
from retrieval.store.faults import kill_point
from retrieval.store.index_store import (
    MANIFEST,
    CatalogItem,
    ImageRecord,
    StoredIndex,
    check_model,
    next_generation,
    open_index,
    remove_leftovers,
    write_embeddings,
    write_index,
)
from retrieval.locations import MEMBER_SEPARATOR
from retrieval.models.model import EmbeddingModel, load_model
from retrieval.models.registry import DEFAULT_MODEL

OWN_FILES = {".lock", "staging"}
COPY_BLOCK = 65_536
"""Rows of the old generation copied into the new one at a time."""


@dataclass
class BuildSummary:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[dict] = field(default_factory=list)
    embedded: int = 0
    """Images embedded by this run; `resumed` more were staged by an interrupted one before it."""
    resumed: int = 0
    total: int = 0
    index: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@contextmanager
def build_lock(directory: Path) -> Iterator[None]:
    """One build per index directory at a time.

    A POSIX record lock (lockf), not flock: decode workers forked by the build share its open
    files, and an flock would stay held by orphaned workers for seconds after the build is
    killed; a record lock belongs to the build's process alone and dies with it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise TusouError(f"another tusou build is writing {directory}: wait for it to finish") from None
        yield


def check_out_dir(directory: Path) -> None:
    """Refuse to write into a file or into a folder of the user's that is not an index."""
    if directory.exists() and not directory.is_dir():
        raise TusouError(f"--out {directory} is a file, not a directory")
    if directory.is_dir() and not (directory / MANIFEST).exists() and set(os.listdir(directory)) - OWN_FILES:
        raise TusouError(f"{directory} exists and is not a tusou index: choose a new or empty --out directory")


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def build_index(
    paths: list[str | Path],
    out: str | Path,
    model_name: str | None = None,
    *,
    model: EmbeddingModel | None = None,
    device: str = "auto",
    text_weights: str | Path | None = None,
    image_weights: str | Path | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    checkpoint_every: int = 1024,
    index_type: str | None = None,
    max_index_memory: int | None = None,
    precision: str = "auto",
    progress: bool = True,
    ray: RayOptions | None = None,
) -> BuildSummary:
    """Build or update the index at `out` from the images under `paths`.

    `index_type` None keeps what the index was built with (`auto` for a new one), so an
    `auto` index changes type as the collection grows. `ray` embeds on a Ray cluster
    (indexer.ray_engine) instead of in this process; everything else stays the same.
    """
    out = Path(out)
    check_out_dir(out)
    if batch_size < 1 or checkpoint_every < 1:
        raise TusouError(f"--{'batch-size' if batch_size < 1 else 'checkpoint-every'} must be at least 1")
    created = not out.exists()
    try:
        with build_lock(out), ray_session(ray):
            remove_leftovers(out)
            previous = open_index(out) if (out / MANIFEST).exists() else None
            if previous and (model_name or model):
                check_model(previous.manifest, out, model_name or model.name)
            if model is None:
                built = previous.manifest.model if previous else {}
                model = load_model(
                    model_name or built.get("name", DEFAULT_MODEL),
                    device=device,
                    text_weights=text_weights or built.get("text_weights"),
                    image_weights=image_weights or built.get("image_weights"),
                )
            model_info = {"name": model.name, "fingerprint": model.fingerprint(), **model.sources}
            if previous:
                check_model(previous.manifest, out, model.name, model_info["fingerprint"])
            model = model.with_dtype(compute_dtype(model.device, precision))
            files, skipped = scan(paths, progress=progress, known=previous.items if previous else ())
            if not files:
                shown = ", ".join(str(p) for p in paths)
                raise TusouError(f"no images found under {shown} (looked for {describe_extensions()})")
            staging = Staging(out / "staging", model_info)
            old = {item.path: (row, item) for row, item in enumerate(previous.items)} if previous else {}
            unchanged = {path for path, source in files.items() if path in old and old[path][1].stamp == source.stamp}
            to_embed = [source for path, source in files.items() if path not in unchanged and staging.get(source) is None]
            staged = _staged_members(files, staging)  # what an interrupted build staged of shards not listed yet
            skip = {shard: tuple(r.path[len(shard) + len(MEMBER_SEPARATOR) :] for r in records) for shard, records in staged.items()}
            units = units_of(to_embed, skip)
            images = None if any(source.whole for source in to_embed) else len(to_embed)
            try:
                if ray is None:
                    skipped += _embed(model, units, images, files, staging, batch_size, workers, checkpoint_every, progress)
                else:
                    worker_model = WorkerModel(
                        model.name, model.sources.get("text_weights"), model.sources.get("image_weights"), model_info["fingerprint"], device, precision
                    )
                    skipped += embed_on_ray(model, worker_model, units, images, files, staging, ray, batch_size, checkpoint_every, progress)
            finally:
                staging.flush()
            files = _listed(files, _staged_members(files, staging))
            layout = _layout(previous, index_type, max_index_memory)
            summary = _commit(out, previous, model_info, model.dim, files, unchanged, staging, old, layout, progress)
            summary.embedded = staging.added
            summary.resumed = max(0, summary.added + summary.updated - staging.added)  # a retried Ray task can deliver twice
            kill_point("committed")
            staging.clear()
    except BaseException:
        if created and out.is_dir() and set(os.listdir(out)) <= {".lock"}:
            shutil.rmtree(out, ignore_errors=True)
        raise
    summary.skipped = [asdict(item) for item in skipped]
    return summary


def _layout(previous: StoredIndex | None, index_type: str | None, max_memory: int | None) -> dict:
    """The requested index type and memory budget: as given, else as the index was built."""
    built = previous.manifest.index if previous else {}
    return {
        "requested": index_type or built.get("requested", "auto"),
        "max_memory": max_memory or built.get("max_memory"),
    }


def _staged_members(files: dict[str, SourceFile], staging: Staging) -> dict[str, list[ImageRecord]]:
    """For each shard of `files` that was not listed at scan time (`whole`), its members staged so far."""
    whole = {path: source for path, source in files.items() if source.whole}
    found: dict[str, list[ImageRecord]] = {}
    if whole:
        for record in staging.records():
            shard = whole.get(record.path.rpartition(MEMBER_SEPARATOR)[0])
            if shard is not None and record.change_key == shard.change_key:
                found.setdefault(shard.path, []).append(record)
    return found


def _listed(files: dict[str, SourceFile], staged: dict[str, list[ImageRecord]]) -> dict[str, SourceFile]:
    """`files` with each whole shard replaced by the members read from it, in path order."""
    if not any(source.whole for source in files.values()):
        return files
    listed = {path: source for path, source in files.items() if not source.whole}
    for shard, records in staged.items():
        listed |= {r.path: SourceFile(r.path, r.size, r.mtime_ns, r.change_key, shard) for r in records}
    return dict(sorted(listed.items()))


def _embed(
    model: EmbeddingModel,
    units: list[Unit],
    images: int | None,
    files: dict[str, SourceFile],
    staging: Staging,
    batch_size: int,
    workers: int | None,
    checkpoint_every: int,
    progress: bool,
) -> list[Skipped]:
    skipped: list[Skipped] = []
    if not units:
        return skipped
    since_flush = 0
    workers = default_workers() if workers is None else max(0, workers)
    batches = decoded_batches(units, model.preprocess, model.image_size, batch_size, workers)
    with tqdm(total=images, desc="embedding", unit=" img", disable=not progress) as bar:
        for batch in batches:
            skipped += [Skipped(item.path, item.error or "unreadable") for item in batch.failed]
            if batch.pixels is not None:
                vectors = model.encode_pixels(batch.pixels)
                for item, vector in zip(batch.ok, vectors):
                    staging.add(item.record(files), vector)
                since_flush += len(batch.ok)
            if since_flush >= checkpoint_every:
                staging.flush()
                since_flush = 0
            bar.update(len(batch.ok) + len(batch.failed))
            kill_point("embedded")
    return skipped


def _commit(
    out: Path,
    previous: StoredIndex | None,
    model_info: dict,
    dim: int,
    files: dict[str, SourceFile],
    unchanged: set[str],
    staging: Staging,
    old: dict[str, tuple[int, CatalogItem]],
    layout: dict,
    progress: bool,
) -> BuildSummary:
    """Assemble the new catalog in path order and write it as a new generation if anything changed.

    The new embeddings file is filled block by block from the old generation and the staged
    chunks, and the FAISS index is built from it mapped, so no step holds every vector.
    """
    kill_point("commit")
    next_id = previous.manifest.next_id if previous else 0
    items: list[CatalogItem] = []
    kept: list[tuple[int, int]] = []
    """(new row, old row) of each unchanged image."""
    staged_rows: dict[str, int] = {}
    summary = BuildSummary(index=str(out))
    for path, source in files.items():
        if path in unchanged:
            row, item = old[path]
            kept.append((len(items), row))
            items.append(item)
            summary.unchanged += 1
            continue
        record = staging.get(source)
        if record is None:
            continue
        if path in old:
            item_id = old[path][1].id
            summary.updated += 1
        else:
            item_id, next_id = next_id, next_id + 1
            summary.added += 1
        staged_rows[path] = len(items)
        items.append(CatalogItem(id=item_id, **asdict(record)))
    summary.removed = sum(1 for path in old if path not in files)
    summary.total = len(items)
    unchanged_items = previous is not None and [i.path for i in items] == [i.path for i in previous.items] and not summary.updated
    if unchanged_items and all(previous.manifest.index.get(key) == value for key, value in layout.items()):
        return summary

    def fill(embeddings: np.ndarray) -> None:
        for start in range(0, len(kept), COPY_BLOCK):
            new_rows, old_rows = np.array(kept[start : start + COPY_BLOCK]).T
            embeddings[new_rows] = previous.embeddings[old_rows]
        staging.copy_vectors(staged_rows, embeddings)

    embeddings = write_embeddings(out, next_generation(previous.manifest if previous else None), (len(items), dim), fill)
    faiss_index, index_info = index_embeddings(embeddings, layout["requested"], layout["max_memory"], progress)
    write_index(
        out,
        model=model_info,
        items=items,
        embeddings=embeddings,
        faiss_index=faiss_index,
        index_info=index_info,
        previous=previous.manifest if previous else None,
    )
    return summary
