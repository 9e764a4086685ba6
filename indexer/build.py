"""An index build: scan, embed what is new or changed, commit the change in place.

The index mirrors the given paths: images that appeared are added, images whose stamp
(size, mtime, change key: indexer.sources) changed are re-embedded, images that are gone
are dropped. Embeddings are staged in chunks as they are made, so an interrupted build
resumes where it stopped. The commit (indexer.commit) writes one new segment of the embedded
vectors and deletion records for the rows they replace, so what a build writes grows with what
changed. An index of format 1 is converted first (indexer.convert).
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

from indexer import space
from indexer.commit import Change, commit_change, create_index
from indexer.convert import convert
from indexer.decode import units_of
from indexer.engine import Engine, Work
from indexer.leftovers import CATALOG_FILES, TEMPORARY_FILE, remove_leftovers, removed_on_failure
from indexer.merge import merge_all, merge_as_policy_says
from indexer.plan import BuildPlan, Layout
from indexer.sources import SourceFile, describe_extensions, scan
from indexer.staging import Staging
from retrieval.errors import TusouError
from retrieval.locations import MEMBER_SEPARATOR
from retrieval.models.model import EmbeddingModel
from retrieval.store.catalog import SEGMENTS_DIR, Catalog
from retrieval.store.faults import kill_point
from retrieval.store.manifest import MANIFEST, check_model, read_manifest, rebuild_hint
from retrieval.store.model_ref import ModelRef, cast
from retrieval.store.records import CatalogItem, ImageRecord
from retrieval.store.segment import check_segments
from retrieval.store.store import CATALOG, Store, open_store

OWN_FILES = {".lock", "staging", SEGMENTS_DIR, *CATALOG_FILES}
"""What a build puts in its directory before the manifest makes it an index (a killed first build leaves them)."""


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
    foreign = {name for name in os.listdir(directory) if name not in OWN_FILES and not TEMPORARY_FILE.fullmatch(name)} if directory.is_dir() else set()
    if foreign and not (directory / MANIFEST).exists():
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
        with space.reported(out, "run the build again: it resumes from what it staged"), build_lock(out), engine.session():
            return _build(plan, engine)
    except BaseException:
        if created and out.is_dir() and set(os.listdir(out)) <= {".lock"}:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _build(plan: BuildPlan, engine: Engine) -> BuildSummary:
    """Scan, embed what is new or changed into the staging, commit the change; under the build lock."""
    out = plan.out
    remove_leftovers(out)
    with removed_on_failure(out):
        if (out / MANIFEST).is_file():
            if plan.model_name or plan.model:  # another model's name is refused before anything is written or loaded
                check_model(read_manifest(out), out, plan.model_name or plan.model.name)
            convert(out, plan.progress)
        previous = _previous(out)
        try:
            return _update(plan, engine, previous)
        finally:
            if previous:
                previous.close()


def _previous(out: Path) -> Store | None:
    """The index as it is, every segment checked: a build refuses a damaged index rather than
    guess which of its parts to trust (the FAISS files are mapped, not read)."""
    if not (out / MANIFEST).is_file():
        return None
    store = open_store(out)
    try:
        check_segments(out, store.catalog.segments(), store.manifest.dim)
    except BaseException:
        store.close()
        raise
    return store


def _update(plan: BuildPlan, engine: Engine, previous: Store | None) -> BuildSummary:
    out = plan.out
    built = _built_layout(previous) if previous else None
    layout = plan.layout(built)
    model, ref = _load_model(plan, previous)
    old = {item.path: (item, segment, row) for item, segment, row in previous.catalog.all_items()} if previous else {}
    files, skipped = scan(plan.paths, progress=plan.progress, known=[item for item, _, _ in old.values()])
    if not files:
        shown = ", ".join(str(p) for p in plan.paths)
        raise TusouError(f"no images found under {shown} (looked for {describe_extensions()})")
    staging = Staging(out / "staging", ref)
    scanned = _Scanned.against(files, old)
    space.expect(_expected_bytes(scanned, model.dim, layout, plan.checkpoint_every))
    try:
        try:
            skipped += engine.embed(model, ref, _work(scanned, staging), staging)
        finally:
            staging.flush()
        scanned = replace(scanned, files=_listed(files, _staged_members(files, staging)))
        summary = _commit(out, previous, ref, model.dim, scanned, staging, layout, built, plan.progress)
        summary.embedded = staging.added
        summary.resumed = max(0, summary.added + summary.updated - staging.added)  # a retried Ray task can deliver twice
        kill_point("committed")
    finally:
        staging.close()
    staging.clear()
    _merge(out, layout, built, plan.progress)
    summary.skipped = [asdict(item) for item in skipped]
    return summary


def _expected_bytes(scanned: _Scanned, dim: int, layout: Layout, chunk_rows: int) -> int:
    """What the rest of the build writes at most: every new or changed image staged, then the segment
    and catalog rows of the commit (the merges after it say what they need themselves)."""
    changed = [path for path in scanned.files if path not in scanned.unchanged]
    paths = space.path_bytes(changed)
    commit = space.segment_bytes(len(changed), dim, layout.requested) + space.sqlite_bytes(len(changed), paths)
    return space.staging_bytes(len(changed), paths, dim, chunk_rows) + commit


def _merge(out: Path, layout: Layout, built: Layout | None, progress: bool) -> None:
    """After the build's commit, each merge a transaction of its own: every segment into one when the
    layout asked for differs from the one built (`tusou index --index-type T` on an index of another
    type), else as the tiered policy says."""
    catalog = Catalog(out / CATALOG)
    try:
        if built is not None and layout != built:
            merge_all(out, catalog, layout.requested, layout.max_memory, progress)
        else:
            merge_as_policy_says(out, catalog, layout, progress)
    finally:
        catalog.close()


def _built_layout(previous: Store) -> Layout:
    layout = previous.catalog.setting("layout")
    if not isinstance(layout, dict) or set(layout) != {"requested", "max_memory"}:
        raise TusouError(f"{previous.catalog.path} is damaged (its layout setting is {layout!r}): {rebuild_hint(previous.directory)}")
    return Layout(**layout)


def _load_model(plan: BuildPlan, previous: Store | None) -> tuple[EmbeddingModel, ModelRef]:
    """The model to embed with, in the plan's precision, and the reference to it as loaded (for the manifest).

    On an existing index it must be the index's model (its name was checked before), the same weights.
    """
    loaded = plan.model or plan.model_ref(previous.manifest.model if previous else None).load_weights(plan.device)
    if previous:
        previous.check_weights(loaded)
    ref = ModelRef.of(loaded)
    return cast(loaded, plan.precision), ref


@dataclass(frozen=True)
class _Scanned:
    """The collection as scanned, against the index as it was."""

    files: dict[str, SourceFile]
    old: dict[str, tuple[CatalogItem, int, int]]
    """Item and (segment, row) of each path in the index as it was."""
    unchanged: set[str]
    """Paths whose stamp is the one the index has: their items and vectors stay as they are."""

    @classmethod
    def against(cls, files: dict[str, SourceFile], old: dict[str, tuple[CatalogItem, int, int]]) -> _Scanned:
        return cls(files, old, {path for path, source in files.items() if path in old and old[path][0].stamp == source.stamp})


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
    previous: Store | None,
    ref: ModelRef,
    dim: int,
    scanned: _Scanned,
    staging: Staging,
    layout: Layout,
    built: Layout | None,
    progress: bool,
) -> BuildSummary:
    """Commit what changed (nothing changed, nothing written: no new generation)."""
    kill_point("commit")
    summary = BuildSummary(index=str(out))
    next_id = int(previous.catalog.setting("next_id", 0)) if previous else 0
    change = _change(scanned, staging, next_id, layout, built, summary)
    summary.removed = sum(1 for path in scanned.old if path not in scanned.files)
    summary.total = summary.unchanged + summary.added + summary.updated
    if previous is None:
        create_index(out, ref, dim, change, progress)
    elif not change.empty:  # a new layout alone is recorded by the merge it asks for (_merge)
        commit_change(out, previous.catalog, dim, change, progress)
    return summary


def _change(scanned: _Scanned, staging: Staging, next_id: int, layout: Layout, built: Layout | None, summary: BuildSummary) -> Change:
    """What the build changes: staged images become the new segment's items in path order (changed
    ones keep their ids, new ones get new ids); every other image not unchanged leaves, and the old
    rows of both are deleted. Counted into `summary`."""
    items: list[CatalogItem] = []
    for path, source in scanned.files.items():
        if path in scanned.unchanged:
            summary.unchanged += 1
            continue
        record = staging.get(source)
        if record is None:
            continue
        if path in scanned.old:
            item_id = scanned.old[path][0].id
            summary.updated += 1
        else:
            item_id, next_id = next_id, next_id + 1
            summary.added += 1
        items.append(CatalogItem(id=item_id, **asdict(record)))
    change = Change(items, lambda out: staging.copy_vectors({item.path: row for row, item in enumerate(items)}, out), next_id, layout, built)
    staged = {item.id for item in items}
    for path, (item, segment, row) in scanned.old.items():
        if path not in scanned.unchanged:
            change.replaced.setdefault(segment, []).append(row)
            if item.id not in staged:
                change.removed.append(item.id)
    return change
