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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from indexer.decode import units_of
from indexer.engine import Engine, Work
from indexer.faiss_build import index_embeddings
from indexer.plan import BuildPlan, Layout
from indexer.sources import SourceFile, describe_extensions, scan
from indexer.staging import Staging
from retrieval.errors import TusouError
from retrieval.locations import MEMBER_SEPARATOR
from retrieval.models.model import EmbeddingModel
from retrieval.store.faults import kill_point
from retrieval.store.index_store import (
    CatalogItem,
    ImageRecord,
    StoredIndex,
    next_generation,
    open_index,
    remove_leftovers,
    write_embeddings,
    write_index,
)
from retrieval.store.manifest import MANIFEST, check_model
from retrieval.store.model_ref import ModelRef, cast

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


def build_index(plan: BuildPlan) -> BuildSummary:
    """Build or update the index at `plan.out` from the images under `plan.paths`.

    A new index directory that the build leaves empty (it failed before writing) is removed.
    """
    out = plan.out
    check_out_dir(out)
    created = not out.exists()
    engine = plan.engine()
    try:
        with build_lock(out), engine.session():
            return _build(plan, engine)
    except BaseException:
        if created and out.is_dir() and set(os.listdir(out)) <= {".lock"}:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _build(plan: BuildPlan, engine: Engine) -> BuildSummary:
    """Scan, embed what is new or changed into the staging, commit a new generation; under the build lock."""
    out = plan.out
    remove_leftovers(out)
    previous = open_index(out) if (out / MANIFEST).exists() else None
    model, ref = _load_model(plan, previous)
    files, skipped = scan(plan.paths, progress=plan.progress, known=previous.items if previous else ())
    if not files:
        shown = ", ".join(str(p) for p in plan.paths)
        raise TusouError(f"no images found under {shown} (looked for {describe_extensions()})")
    staging = Staging(out / "staging", ref)
    scanned = _Scanned.against(files, previous)
    try:
        skipped += engine.embed(model, ref, _work(scanned, staging), staging)
    finally:
        staging.flush()
    scanned = replace(scanned, files=_listed(files, _staged_members(files, staging)))
    layout = plan.layout(previous.manifest.index if previous else None)
    summary = _commit(out, previous, ref, model.dim, scanned, staging, layout, plan.progress)
    summary.embedded = staging.added
    summary.resumed = max(0, summary.added + summary.updated - staging.added)  # a retried Ray task can deliver twice
    kill_point("committed")
    staging.clear()
    summary.skipped = [asdict(item) for item in skipped]
    return summary


def _load_model(plan: BuildPlan, previous: StoredIndex | None) -> tuple[EmbeddingModel, ModelRef]:
    """The model to embed with, in the plan's precision, and the reference to it as loaded (for the manifest).

    On an existing index it must be the index's model: the name is checked before any weights load.
    """
    if previous and (plan.model_name or plan.model):
        check_model(previous.manifest, plan.out, plan.model_name or plan.model.name)
    loaded = plan.model or plan.model_ref(previous.manifest.model if previous else None).load_weights(plan.device)
    if previous:
        previous.check_weights(loaded)
    ref = ModelRef.of(loaded)
    return cast(loaded, plan.precision), ref


@dataclass(frozen=True)
class _Scanned:
    """The collection as scanned, against the index as it was."""

    files: dict[str, SourceFile]
    old: dict[str, tuple[int, CatalogItem]]
    """Row and item of each path in the index as it was."""
    unchanged: set[str]
    """Paths whose stamp is the one the index has: their vectors carry over."""

    @classmethod
    def against(cls, files: dict[str, SourceFile], previous: StoredIndex | None) -> _Scanned:
        old = {item.path: (row, item) for row, item in enumerate(previous.items)} if previous else {}
        return cls(files, old, {path for path, source in files.items() if path in old and old[path][1].stamp == source.stamp})


def _work(scanned: _Scanned, staging: Staging) -> Work:
    """What is left to embed: the files neither unchanged nor staged, and of each shard not listed yet,
    the members that an interrupted build did not stage."""
    files = scanned.files
    to_embed = [source for path, source in files.items() if path not in scanned.unchanged and staging.get(source) is None]
    staged = _staged_members(files, staging)
    skip = {shard: tuple(r.path[len(shard) + len(MEMBER_SEPARATOR) :] for r in records) for shard, records in staged.items()}
    images = None if any(source.whole for source in to_embed) else len(to_embed)
    return Work(units_of(to_embed, skip), images, files)


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


def _commit(
    out: Path,
    previous: StoredIndex | None,
    ref: ModelRef,
    dim: int,
    scanned: _Scanned,
    staging: Staging,
    layout: Layout,
    progress: bool,
) -> BuildSummary:
    """Assemble the new catalog in path order and write it as a new generation if anything changed."""
    kill_point("commit")
    summary = BuildSummary(index=str(out))
    catalog = _catalog(scanned, staging, previous.manifest.next_id if previous else 0, summary)
    summary.removed = sum(1 for path in scanned.old if path not in scanned.files)
    summary.total = len(catalog.items)
    same_items = previous is not None and [i.path for i in catalog.items] == [i.path for i in previous.items] and not summary.updated
    if not (same_items and layout.built(previous.manifest.index)):
        _write_generation(out, previous, ref, dim, catalog, staging, layout, progress)
    return summary


@dataclass
class _Catalog:
    items: list[CatalogItem] = field(default_factory=list)
    kept: list[tuple[int, int]] = field(default_factory=list)
    """(new row, old row) of each unchanged image."""
    staged_rows: dict[str, int] = field(default_factory=dict)
    """New row of each staged image, by path."""


def _catalog(scanned: _Scanned, staging: Staging, next_id: int, summary: BuildSummary) -> _Catalog:
    """The new catalog: unchanged images keep their rows' vectors, changed ones keep their ids, new
    ones get new ids; counted into `summary`."""
    catalog, old = _Catalog(), scanned.old
    for path, source in scanned.files.items():
        if path in scanned.unchanged:
            row, item = old[path]
            catalog.kept.append((len(catalog.items), row))
            catalog.items.append(item)
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
        catalog.staged_rows[path] = len(catalog.items)
        catalog.items.append(CatalogItem(id=item_id, **asdict(record)))
    return catalog


def _write_generation(
    out: Path, previous: StoredIndex | None, ref: ModelRef, dim: int, catalog: _Catalog, staging: Staging, layout: Layout, progress: bool
) -> None:
    """The new embeddings file is filled block by block from the old generation and the staged
    chunks, and the FAISS index is built from it mapped, so no step holds every vector."""

    def fill(embeddings: np.ndarray) -> None:
        for start in range(0, len(catalog.kept), COPY_BLOCK):
            new_rows, old_rows = np.array(catalog.kept[start : start + COPY_BLOCK]).T
            embeddings[new_rows] = previous.embeddings[old_rows]
        staging.copy_vectors(catalog.staged_rows, embeddings)

    embeddings = write_embeddings(out, next_generation(previous.manifest if previous else None), (len(catalog.items), dim), fill)
    faiss_index, entry = index_embeddings(embeddings, layout.requested, layout.max_memory, progress)
    write_index(
        out,
        model=ref,
        items=catalog.items,
        embeddings=embeddings,
        faiss_index=faiss_index,
        index=entry,
        previous=previous.manifest if previous else None,
    )
