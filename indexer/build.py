"""An index build: scan, embed what is new or changed, commit the change in place.

The index mirrors the given paths: images that appeared are added, images whose stamp
(size, mtime, change key: indexer.sources) changed are re-embedded, images that are gone
are dropped. Embeddings are staged in chunks as they are made, so an interrupted build
resumes where it stopped. The commit (indexer.commit) writes one new segment of the embedded
vectors and deletion records for the rows they replace, so what a build writes grows with what
changed. An index of format 1 is converted first (indexer.convert).

The driver holds the scan's list of files and nothing else an image: the comparison with the index
streams its catalog, the commit streams the staged records and the ids they keep out of SQLite
(indexer.staged_items), so a build of 100M images costs no 100 GB of memory (bench/build_memory.py).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from indexer import space
from indexer.commit import Change, commit_change, create_index
from indexer.convert import convert
from indexer.decode import units_of
from indexer.engine import Engine, Work
from indexer.leftovers import check_out_dir, remove_leftovers, removed_on_failure
from indexer.merge import merge_all, merge_as_policy_says
from indexer.plan import BuildPlan, Layout
from indexer.sources import SourceFile, describe_extensions, scan
from indexer.staged_items import staged_items
from indexer.staging import Staging
from retrieval.errors import TusouError
from retrieval.models.model import EmbeddingModel
from retrieval.store.catalog import Catalog
from retrieval.store.faults import kill_point
from retrieval.store.manifest import MANIFEST, check_model, read_manifest, rebuild_hint
from retrieval.store.model_ref import ModelRef, cast
from retrieval.store.records import SHARD_MEMBER, CatalogItem
from retrieval.store.segment import check_segments
from retrieval.store.store import CATALOG, Store, open_store


@dataclass
class BuildSummary:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[dict] = field(default_factory=list)
    embedded: int = 0
    """Images embedded by this run; `resumed` more were staged by an interrupted one before it."""
    read: int = 0
    """Images whose text this commit put in the index (read by this run or staged by an interrupted one)."""
    resumed: int = 0
    total: int = 0
    index: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class BuildLocked(TusouError):
    """Another build holds the index's lock: a caller that can wait (the server's watcher) tries again."""


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
            raise BuildLocked(f"another tusou build is writing {directory}: wait for it to finish") from None
        yield


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
    ocr = plan.reads_text(previous.catalog if previous else None)
    files, skipped = scan(plan.paths, progress=plan.progress, known=previous.catalog.keys_under if previous else None)
    if not files and not (plan.empty_ok and previous):
        shown = ", ".join(str(p) for p in plan.paths)
        raise TusouError(f"no images found under {shown} (looked for {describe_extensions()})")
    unread = set(previous.catalog.unread()) if ocr and previous else None
    compared = compare(dict(files) if plan.hold else files, previous.catalog if previous else None, unread)
    held = plan.hold(list(compared.pending.values())) if plan.hold and compared.pending else set()
    if held:  # compared again, the held files left as the index has them
        compared = compare(files, previous.catalog if previous else None, unread, held)
    staging = Staging(out / "staging", ref)
    space.expect(_expected_bytes(compared.pending, model.dim, layout, plan.checkpoint_every))
    try:
        try:
            skipped += engine.embed(model, ref, _work(compared, staging, ocr), staging)
        finally:
            staging.flush()
        summary = commit_staged(out, previous, ref, model.dim, compared, staging, layout, built, plan.progress, ocr)
        summary.embedded = staging.added
        summary.read = len(staging.texts)
        summary.resumed = max(0, summary.added + summary.updated - staging.added)  # a retried Ray task can deliver twice
        kill_point("committed")
    finally:
        staging.close()
    staging.clear()
    _merge(out, layout, built, plan.progress)
    summary.skipped = [asdict(item) for item in skipped]
    return summary


def _expected_bytes(pending: dict[str, SourceFile], dim: int, layout: Layout, chunk_rows: int) -> int:
    """What the rest of the build writes at most: every pending image staged, then the segment and
    catalog rows of the commit (the merges after it say what they need themselves)."""
    paths = space.path_bytes(pending)
    commit = space.segment_bytes(len(pending), dim, layout.requested) + space.sqlite_bytes(len(pending), paths)
    return space.staging_bytes(len(pending), paths, dim, chunk_rows) + commit


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
class Compared:
    """The collection as scanned, against the index as it was."""

    pending: dict[str, SourceFile]
    """The scanned files the index does not hold as they are (new, changed, shards to list): what the
    build embeds and commits."""
    unchanged: int
    indexed: int
    """Items of the index as it was."""
    replaced: dict[int, array]
    """Segment → rows of the items not unchanged (changed, or gone): the commit deletes them."""
    to_read: dict[str, SourceFile] = field(default_factory=dict)
    """Unchanged items whose text was not read yet, when the build reads text: read, not embedded."""


def compare(files: dict[str, SourceFile], catalog: Catalog | None, unread: set[int] | None = None, held: set[str] = frozenset()) -> Compared:
    """The index's items, streamed, against the scan's `files`, which become the pending ones: an
    unchanged file leaves them, as does a shard kept as it is; an unchanged one of `unread` (ids)
    is to be read. A `held` path (BuildPlan.hold) is left as the index has it: kept if indexed, not
    added if not. Holds nothing an item but the rows it replaces (8 bytes each) and those to read."""
    unchanged = indexed = 0
    replaced: dict[int, array] = {}
    to_read: dict[str, SourceFile] = {}
    for path in held:
        files.pop(path, None)
    for item, segment, row in catalog.all_items() if catalog else ():
        indexed += 1
        if item.path in held:
            unchanged += 1
        elif _unchanged(item, files):
            files.pop(item.path, None)
            unchanged += 1
            if unread is not None and item.id in unread:
                to_read[item.path] = _source_of(item)
        else:
            replaced.setdefault(segment, array("q")).append(row)
    for kept in [path for path, source in files.items() if source.kept]:
        del files[kept]
    return Compared(files, unchanged, indexed, replaced, to_read)


def _source_of(item: CatalogItem) -> SourceFile:
    """Where an indexed image is read from again: its file, URL, or its shard's member."""
    shard = SHARD_MEMBER.search(item.path)
    return SourceFile(item.path, item.size, item.mtime_ns, item.change_key, item.path[: shard.start()] if shard else None)


def _unchanged(item: CatalogItem, files: dict[str, SourceFile]) -> bool:
    """Whether the scan found `item`'s file with the stamp the index has, or its shard kept as it is."""
    source = files.get(item.path)
    if source is not None:
        return source.stamp == item.stamp
    shards = (files.get(item.path[: found.start()]) for found in SHARD_MEMBER.finditer(item.path))
    return any(shard is not None and shard.kept and shard.change_key == item.change_key for shard in shards)


def _work(compared: Compared, staging: Staging, ocr: bool) -> Work:
    """What is left to embed: the pending files not staged, and of each shard not listed yet, the
    members that an interrupted build did not stage. Reading text, what is left to read alone: the
    unchanged images not read yet, and the pending ones an interrupted build staged without their text."""
    pending = compared.pending
    to_embed = [source for source in pending.values() if staging.get(source) is None]
    skip = {source.path: tuple(staging.members(source)) for source in to_embed if source.whole}
    if not ocr:
        return Work(units_of(to_embed, skip), None if skip else len(to_embed), pending)
    staged = (source for source in pending.values() if not source.whole and staging.get(source) is not None)
    to_read = {source.path: source for source in (*compared.to_read.values(), *staged) if not staging.has_text(source)}
    units = units_of(to_embed, skip) + units_of(list(to_read.values()), read_only=True)
    return Work(units, None if skip else len(to_embed) + len(to_read), pending, True, to_read)


def commit_staged(
    out: Path,
    previous: Store | None,
    ref: ModelRef,
    dim: int,
    compared: Compared,
    staging: Staging,
    layout: Layout,
    built: Layout | None,
    progress: bool,
    ocr: bool = False,
) -> BuildSummary:
    """Commit what changed (nothing changed, nothing written: no new generation): the staged images of
    the pending files become the new segment's items in path order (changed ones keep their ids, new
    ones get new ids), and the rows of every item not unchanged are deleted; the text staged goes in
    with them, and `ocr` is remembered. Streamed from the staging and the catalog
    (indexer.staged_items): nothing an image is held but its id."""
    kill_point("commit")
    next_id = int(previous.catalog.setting("next_id", 0)) if previous else 0
    items = staged_items(staging, compared.pending.values(), out / CATALOG if previous else None, next_id)
    change = Change(items, items.fill, items.next_id, layout, built, replaced=compared.replaced, texts=staging.texts, ocr=ocr)
    summary = BuildSummary(added=items.added, updated=items.updated, unchanged=compared.unchanged, index=str(out))
    summary.removed = compared.indexed - compared.unchanged - items.known
    summary.total = summary.unchanged + summary.added + summary.updated
    if previous is None:
        create_index(out, ref, dim, change, progress)
    elif not change.empty or bool(previous.catalog.setting("ocr", False)) != ocr:  # a new layout alone is recorded by the merge it asks for (_merge)
        commit_change(out, previous.catalog, dim, change, progress)
    return summary
