"""An index directory as a store: its identity (manifest), its catalog (SQLite), its live segments.

`open_store(dir)` reads the manifest and connects to the catalog; no item row is read. `view()`
is one consistent state: the segments the catalog named in one read transaction, each opened once
and kept while it lives (segments never change; only their deletion records are re-read). A view
answers top-k searches over all its segments, merged, with filters planned by how many items match.

An index of format 1 (one generation: JSONL catalog, embeddings, FAISS file) opens as one segment
with a catalog in memory built from its JSONL, so it searches, filters included, as it is; the
next build converts it on disk (indexer.convert), and an open Store follows: once the manifest
says format 2, its next view is of the converted index (a server never restarts for it).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from retrieval.errors import TusouError
from retrieval.search.filters import FORMAT_ALIASES, Filters
from retrieval.store.arrays import read_array
from retrieval.store.catalog import Catalog, SegmentRow, item_row, item_values, put_items, put_segment, put_setting
from retrieval.store.index_store import open_index
from retrieval.store.manifest import MANIFEST, Manifest, read_manifest, rebuild_hint
from retrieval.store.model_ref import BOTH, OtherWeights, Tower
from retrieval.store.records import CatalogItem
from retrieval.store.segment import SCAN_ROWS, Segment, missing_file, open_segment

CATALOG = "catalog.sqlite"
FETCH_SHARE = 0.2
"""The share of the index up to which a filtered search fetches the matching rows (SQLite hands
them over as one string, about 0.45 µs a row) and searches only them; above it, the search widened
by 1/share and post-filtered costs less (bench/store.py: at 1M, 10% fetched answers in a quarter of
the post-filtered time, 100% post-filtered in a twentieth of the fetched)."""
PLANS_KEPT = 8
"""Filters whose matching rows a view keeps (at most 20% of the index each: 16 MB at 10M)."""
SHARE_SAMPLE = 1024
"""Items sampled to estimate a broad filter's share of the index (±3% at 95%; it chooses the plan
and widens the search, and 1,024 primary-key lookups take about 6 ms)."""


class StaleView(Exception):
    """A filtered search found the catalog of a later commit than its view's: the rows the filter
    matches may lie in segments the view does not hold. Search a newer view (Store.view())."""


@dataclass
class View:
    """One consistent state of the index. Positions are global: a segment's rows follow the rows of
    the segments before it (in segment id order)."""

    directory: Path
    catalog: Catalog
    generation: int
    segments: list[Segment]
    bases: np.ndarray = field(init=False)
    matched: OrderedDict[Filters, Matching] = field(default_factory=OrderedDict, init=False, repr=False)
    """What the catalog said the last PLANS_KEPT filters match, as of this view: a filter applied to
    query after query, or page after page, reads the catalog once. (A dict, not functools.lru_cache on
    a method, which would tie the view to itself in a cycle and keep its mapped files until a GC.)"""
    _guard: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.bases = np.cumsum([0] + [len(s.ids) for s in self.segments])

    def __len__(self) -> int:
        """Live items."""
        return sum(segment.live for segment in self.segments)

    def _located(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        which = np.searchsorted(self.bases, positions, side="right") - 1
        return which, positions - self.bases[which]

    def vectors(self, positions: np.ndarray) -> np.ndarray:
        """The stored float16 vectors at `positions`, in their order."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), self.dim), dtype=np.float16)
        which, rows = self._located(positions)
        for s in np.unique(which):
            picked = which == s
            out[picked] = self.segments[s].vectors[rows[picked]]
        return out

    def ids(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        which, rows = self._located(positions)
        return np.array([self.segments[s].ids[r] for s, r in zip(which, rows)], dtype=np.int64)

    def position_of(self, item: dict | None) -> int | None:
        """The position of a catalog row's vector in this view (None: not in it)."""
        if item is None:
            return None
        for base, segment in zip(self.bases, self.segments):
            if segment.id == item["segment"]:
                return int(base + item["row"])
        return None

    @property
    def dim(self) -> int:
        return self.segments[0].vectors.shape[1] if self.segments else 0

    def search(self, queries: np.ndarray, k: int, filters: Filters | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, positions) per query row over every live segment, within `filters`;
        positions are -1 past the last result. Raises StaleView when a commit since this view was
        taken leaves a filter nothing consistent to read (_as_of_view)."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        positions = np.full((len(queries), k), -1, dtype=np.int64)
        with self._as_of_view(filters):
            plan = self._plan(filters)
            for q, query in enumerate(queries if plan is not None else ()):
                found = [(s, *segment.search(query, k, **plan(segment))) for s, segment in enumerate(self.segments) if segment.live]
                merged_scores = np.concatenate([f[1] for f in found]) if found else np.empty(0, np.float32)
                merged = np.concatenate([self.bases[s] + rows for s, _, rows in found]) if found else np.empty(0, np.int64)
                best = np.argsort(-merged_scores, kind="stable")[:k]
                scores[q, : len(best)], positions[q, : len(best)] = merged_scores[best], merged[best]
        return scores, positions

    def items(self, ids: Sequence[int]) -> dict[int, dict]:
        """The catalog rows of `ids` as of this view, read in one transaction of its generation:
        StaleView when a commit came since (a row deleted by it would be missing from a result the
        view still holds, a mix of two commits). A format-1 index's catalog never changes."""
        if not isinstance(self.catalog, Catalog):
            return self.catalog.items(ids)
        with self.catalog.snapshot() as db:
            if int(self.catalog.setting("generation", 0, db)) != self.generation:
                raise StaleView(f"{self.directory} changed after generation {self.generation}")
            return self.catalog.items(ids)

    @contextmanager
    def _as_of_view(self, filters: Filters | None) -> Iterator[None]:
        """The catalog reads of a filtered search (count, matching rows, post-filter), all in one read
        transaction that must be of this view's generation. The catalog keeps only the last commit's
        (segment, row) of each item: after a merge it names the merged segment, which an older view
        does not hold, so the older view would silently miss what the filter matches."""
        if filters is None or not filters.active:
            yield
            return
        with self.catalog.snapshot() as db:
            if int(self.catalog.setting("generation", 0, db)) != self.generation:
                raise StaleView(f"{self.directory} changed after generation {self.generation}")
            yield

    def _plan(self, filters: Filters | None):
        """How each segment is searched: unrestricted; over the matching rows (few enough to fetch:
        Segment.search scans or selects them); or widened and post-filtered (too many to fetch).
        None: nothing matches."""
        if filters is None or not filters.active:
            return lambda segment: {}
        matching = self.matching(filters)
        if matching is None or isinstance(matching, dict):
            empty = np.empty(0, np.int64)
            return None if matching is None else lambda segment: {"allowed": matching.get(segment.id, empty)}
        return lambda segment: {"passes": lambda rows: self.catalog.passing(filters, segment.id, rows), "share": matching}

    def matching(self, filters: Filters) -> Matching:
        """What `filters` match (kept for the view's later searches)."""
        with self._guard:
            if filters in self.matched:
                self.matched.move_to_end(filters)
                return self.matched[filters]
        found = self._matching(filters)
        with self._guard:
            self.matched[filters] = found
            while len(self.matched) > PLANS_KEPT:
                self.matched.popitem(last=False)
        return found

    def _matching(self, filters: Filters) -> Matching:
        count = self.catalog.count_matching(filters, SCAN_ROWS + 1)
        if count == 0:
            return None
        share = None if count <= SCAN_ROWS else max(count / max(1, len(self)), self.catalog.share(filters, SHARE_SAMPLE))
        return self.catalog.matching_rows(filters) if share is None or share <= FETCH_SHARE else share


Matching = dict[int, np.ndarray] | float | None
"""What a filter matches: segment → rows (few enough to fetch), else the share of the index it is
estimated to match (its rows are tested as candidates come), or None (nothing)."""


class Store:
    """An open index directory. Thread-safe: views are made under a lock and are read-only."""

    def __init__(self, directory: Path, manifest: Manifest, catalog: Catalog, legacy: Segment | None = None):
        self.directory = directory
        self.manifest = manifest
        self.catalog = catalog
        self._legacy = legacy
        self._manifest_stamp = _stamp(directory / MANIFEST) if legacy is not None else None
        self._segments: dict[int, Segment] = {}
        self._view: View | None = None
        self._lock = threading.Lock()

    @property
    def generation(self) -> int:
        return int(self.catalog.setting("generation", 0))

    def view(self) -> View:
        """The index as its last commit left it (the same View object until the next commit)."""
        with self._lock:
            if self._legacy is not None and self._converted():
                self._legacy, self._view = None, None
            if self._view is None or (self._legacy is None and self._view.generation != self.generation):
                self._view = self._legacy_view() if self._legacy else self._open_view()
            return self._view

    def _converted(self) -> bool:
        """Whether a build converted this format-1 index since it was opened (indexer.convert swaps the
        manifest after its catalog commit): if so, the manifest and catalog become the converted ones.
        One stat a view; the legacy catalog is left to the requests still reading it (it is in memory)."""
        stamp = _stamp(self.directory / MANIFEST)
        if stamp == self._manifest_stamp:
            return False
        self._manifest_stamp = stamp
        manifest = read_manifest(self.directory)
        if not manifest.segmented:
            return False
        self.catalog = Catalog(self.directory / CATALOG)
        self.manifest = manifest
        return True

    def _legacy_view(self) -> View:
        return View(self.directory, self.catalog, 0, [self._legacy])

    def _open_view(self) -> View:
        """The segments of the last commit, opened. A writer deletes the files of merged-away segments
        and superseded deletion records right after the commit that stops naming them, so a file of
        the rows read here may be gone (any of them: read_faiss says a missing FAISS file is damage)
        before it is opened: when the generation has moved on since, the rows are read again; at the
        same generation, it is damage."""
        while True:
            with self.catalog.snapshot() as db:
                generation = int(self.catalog.setting("generation", 0, db))
                rows = self.catalog.segments(db)
            try:
                segments = [self._segment(row) for row in rows]
            except (FileNotFoundError, TusouError) as exc:
                if self.generation != generation:
                    continue
                if isinstance(exc, FileNotFoundError):
                    raise missing_file(exc.filename, self.directory) from None
                raise
            self._segments = {segment.id: segment for segment in segments}
            return View(self.directory, self.catalog, generation, segments)

    def _segment(self, row: SegmentRow) -> Segment:
        known = self._segments.get(row.id)
        if known is None:
            return open_segment(self.directory, row, self.manifest.dim)
        if len(known.deleted) == row.deleted:
            return known
        deleted = read_array(self.directory / row.files["deleted"], np.int64, 1, rebuild_hint(self.directory))
        return replace(known, deleted=np.asarray(deleted))

    def check_weights(self, model, towers: tuple[Tower, ...] = BOTH) -> None:
        """Refuse a model whose `towers` are not the ones that built this index (a precision cast keeps the fingerprints)."""
        try:
            self.manifest.model.verify(model, towers)
        except OtherWeights as exc:
            raise TusouError(f"{self.directory} was built with {exc}: load the same weights or build a new index") from None

    def close(self) -> None:
        self.catalog.close()


def open_store(directory: str | Path) -> Store:
    """The index at `directory`, checked: its manifest, its catalog and its segments (the first view,
    opened here; on a fault the catalog is closed again, so a damaged index is left as it was found,
    without the -wal and -shm files SQLite makes beside a catalog it opens)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if not manifest.segmented:
        try:
            return _open_legacy(directory)
        except (TusouError, FileNotFoundError):  # or a conversion finished meanwhile, and removed the old files
            manifest = read_manifest(directory)
            if not manifest.segmented:
                raise
            # converted while being opened (indexer.convert deletes the old files after its commit): open what it is now
    if not (directory / CATALOG).is_file():
        raise TusouError(f"{directory} is damaged: its catalog {CATALOG} is missing: {rebuild_hint(directory)}")
    store = Store(directory, manifest, Catalog(directory / CATALOG))
    try:
        store.view()
    except BaseException:
        store.close()
        raise
    return store


class LegacyCatalog:
    """A format-1 index's catalog: its JSONL items, in memory as they were read. Lookups by id come from
    them; a catalog in SQLite (in memory) is built from them only when a filter first needs one, since
    building it at every open would cost several times the JSONL parse itself (bench/store.py)."""

    def __init__(self, manifest: Manifest, items: list[CatalogItem]):
        self.path = Path(":memory:")
        self._manifest = manifest
        self._items = items
        self._by_id = {item.id: row for row, item in enumerate(items)}
        self._sql: Catalog | None = None
        self._lock = threading.Lock()

    def items(self, ids) -> dict[int, dict]:
        rows = ((int(i), self._by_id.get(int(i))) for i in ids)
        return {i: item_row(item_values(self._items[row], 1, row, _format_by_name(self._items[row].path))) for i, row in rows if row is not None}

    def setting(self, key: str, default: object = None, db: object = None) -> object:
        return {"next_id": self._manifest.next_id, "updated": self._manifest.updated, "generation": 0}.get(key, default)

    def close(self) -> None:
        if self._sql is not None:
            self._sql.close()

    def __getattr__(self, name: str):
        """Filters, snapshots and scans: the SQLite catalog's own, built on first use."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._sqlite(), name)

    def _sqlite(self) -> Catalog:
        with self._lock:
            if self._sql is None:
                catalog = Catalog.in_memory()
                files = {"vectors": self._manifest.files["embeddings"], "faiss": self._manifest.files["faiss"]}
                with catalog.transaction() as db:
                    put_items(db, (item_values(item, 1, r, _format_by_name(item.path)) for r, item in enumerate(self._items)))
                    put_segment(db, SegmentRow(1, len(self._items), 0, files, self._manifest.index))
                    put_setting(db, "next_id", self._manifest.next_id)
                self._sql = catalog
            return self._sql


def _open_legacy(directory: Path) -> Store:
    """A format-1 index as one segment and its JSONL catalog (LegacyCatalog)."""
    old = open_index(directory)
    ids = np.array([item.id for item in old.items], dtype=np.int64)
    segment = Segment(1, old.embeddings, ids, old.faiss_index, old.manifest.index, np.empty(0, np.int64))
    return Store(directory, old.manifest, LegacyCatalog(old.manifest, old.items), legacy=segment)


def _stamp(path: Path) -> tuple[int, int] | None:
    """What tells a rewritten (renamed over) file from the one seen before."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_mtime_ns


def _format_by_name(path: str) -> str | None:
    """A format-1 catalog never read the images' headers: their names say what they are."""
    suffix = os.path.splitext(path.rpartition("#")[2] or path)[1].lower().lstrip(".")
    return FORMAT_ALIASES.get(suffix, suffix) or None
