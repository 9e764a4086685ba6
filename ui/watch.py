"""`tusou serve DIR --watch PATH...`: the served index follows folders as files appear, change or go.

The watcher lives in the server's process, on one thread of its own that calls
indexer.build.build_index with the served model (`BuildPlan.model`): the weights are in memory once,
and a commit reaches the served Store the way any commit does (its next view). A child process would
load the weights a second time (1.7 GB for taiyi-clip-l14) for nothing the thread lacks. The build
decodes in this process (`workers=0`): forking decode workers from a process with threads running
(uvicorn's, the observer's, this one) could leave a child holding a lock that no thread will release.

What starts a build: watchdog's native observer (inotify, FSEvents, ...) reporting a change under a
watched folder, or a rescan every `rescan` seconds, for network file systems that send no events
(a build is a rescan: it compares the folders with the index and commits only what changed). A build
starts after DEBOUNCE seconds without an event, so a folder copied in is one build, not hundreds.

A file still being written is not read half-way: the build holds back (`BuildPlan.hold`) every file
it would embed whose size or mtime moved between its scan and a second look SETTLE seconds later, or
that the observer saw written and not closed (inotify says both) in the last OPEN_WRITE_SECONDS. A
held file keeps the state `pending` and is looked at again every SETTLE seconds until it is still.

The index mirrors the folders it is built from: a build drops every item not found under them. So an
index holding images from anywhere else is refused at start (`check_watch`, one line naming where
they are), rather than emptied of them silently; watch those folders too, or serve another index.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from watchdog.events import (DirDeletedEvent, DirMovedEvent, FileAttribEvent, FileClosedEvent,
                             FileCreatedEvent, FileDeletedEvent, FileModifiedEvent, FileMovedEvent, FileSystemEvent,
                             FileSystemEventHandler)
from watchdog.observers import Observer

from retrieval.errors import TusouError
from retrieval.images import is_image_path
from retrieval.locations import is_url
from retrieval.store.catalog import paths_under
from retrieval.store.index_store import read_catalog
from retrieval.store.manifest import MANIFEST, read_manifest, rebuild_hint
from retrieval.store.store import CATALOG

if TYPE_CHECKING:
    from indexer.build import BuildSummary
    from indexer.sources import SourceFile
    from retrieval.models.model import EmbeddingModel

DEBOUNCE = 1.0
"""Seconds without an event before a build starts."""
SETTLE = 0.5
"""Seconds between the two looks at a file that say whether it is still being written."""
OPEN_WRITE_SECONDS = 30.0
"""How long a file written and not closed is held; past it, it is taken as it is (its writer may keep
it open for good; a later change is indexed then)."""
RESCAN = 60.0
SHOWN_FOLDERS = 3
CHANGES = (FileCreatedEvent, FileModifiedEvent, FileAttribEvent, FileClosedEvent, FileDeletedEvent, FileMovedEvent,
           DirDeletedEvent, DirMovedEvent)
"""What can change what the folders hold. Opens and reads are not (a build's own reads make them); nor
is a folder made (what is put in it has events of its own, a folder moved in too)."""


def check_watch(index: Path, paths: Sequence[str]) -> list[Path]:
    """The watched folders, absolute, or the user's mistake as one line: a path missing or not a
    folder, a folder inside the index, a DIR that is no index and cannot become one, or an index
    holding images from outside the folders."""
    from indexer.leftovers import check_out_dir

    if index.exists() and not index.is_dir():
        raise TusouError(f"{index} is a file, not an index directory")
    check_out_dir(index)
    folders = []
    for path in paths:
        folder = Path(os.path.abspath(path))
        if not folder.exists():
            raise TusouError(f"--watch {path}: no such folder")
        if not folder.is_dir():
            raise TusouError(f"--watch {path} is a file, not a folder: watch the folder it is in")
        if _inside(folder.resolve(), index.resolve()):
            raise TusouError(f"--watch {path} is inside the index {index}: watch the image folders, not the index")
        folders.append(folder)
    elsewhere = outside(index, folders) if (index / MANIFEST).is_file() else []
    if elsewhere:
        raise TusouError(
            f"{index} holds images from outside the watched folders (in {', '.join(elsewhere)}), which watching would "
            "drop from it: watch those folders too, or serve another index"
        )
    return folders


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def outside(index: Path, folders: Sequence[Path]) -> list[str]:
    """Where up to SHOWN_FOLDERS items of the index that are not under any of `folders` are (their
    folders, or URLs and shards as they are)."""
    manifest = read_manifest(index)
    if not manifest.segmented:  # format 1: its JSONL catalog, read whole as opening it reads it anyway
        prefixes = tuple(str(folder).rstrip(os.sep) + os.sep for folder in folders)
        items = read_catalog(index / manifest.files["catalog"], rebuild_hint(index))
        return _where([item.path for item in items if not item.path.startswith(prefixes)][:SHOWN_FOLDERS])
    db = sqlite3.connect(f"file:{index / CATALOG}?mode=ro", uri=True)
    try:
        return _where([row[0] for row in _gap_rows(db, folders)])
    except sqlite3.DatabaseError as exc:
        raise TusouError(f"{index / CATALOG} cannot be read ({exc}): {rebuild_hint(index)}") from None
    finally:
        db.close()


def _gap_rows(db: sqlite3.Connection, folders: Sequence[Path]) -> list[tuple]:
    """One item path from each gap between the folders' ranges of the catalog's path index (first
    SHOWN_FOLDERS of them): a few index seeks at any size."""
    order = lambda bound: (isinstance(bound, bytes), bound)  # noqa: E731  (SQLite orders all text before blobs)
    ranges = []
    for folder in folders:
        bounds = paths_under(str(folder).rstrip(os.sep) + os.sep)[1]
        ranges += [(bounds[i], bounds[i + 1]) for i in range(0, len(bounds), 2)]
    gaps, covered = [], None
    for start, end in sorted(ranges, key=lambda pair: order(pair[0])):
        if covered is None or order(start) > order(covered):
            gaps.append((covered, start))
        covered = end if covered is None or order(end) > order(covered) else covered
    gaps.append((covered, None))
    rows = []
    for low, high in gaps:
        where = " AND ".join(["path >= ?"] * (low is not None) + ["path < ?"] * (high is not None)) or "1"
        rows += db.execute(f"SELECT path FROM items WHERE {where} LIMIT 1", [b for b in (low, high) if b is not None]).fetchall()
    return rows[:SHOWN_FOLDERS]


def _where(paths: list[str | bytes]) -> list[str]:
    """The folder of each path (a URL or a shard's member: as it is), each once."""
    named = [os.fsdecode(path) for path in paths]
    return list(dict.fromkeys(path if is_url(path) or "#" in path else os.path.dirname(path) for path in named))


@dataclass
class IndexingState:
    """What the watcher is doing, for /api/v1/info and the UI's header (read from any thread)."""

    folders: list[str]
    rescan: float
    state: str = "idle"
    """idle; pending (a change seen, or a file being written, waits its build); indexing (a build runs)."""
    done: int = 0
    total: int | None = None
    """Images the running (or last) build embedded and had to embed; None: not known yet."""
    held: int = 0
    """Files held back as still being written."""
    last_commit: str | None = None
    last_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set(self, **values: object) -> None:
        with self._lock:
            for name, value in values.items():
                setattr(self, name, value)

    def report(self, done: int, total: int | None) -> None:
        """The build's progress (BuildPlan.report)."""
        self.set(done=done, total=total)

    def to_dict(self) -> dict:
        with self._lock:
            return {"state": self.state, "done": self.done, "total": self.total, "held": self.held, "last_commit": self.last_commit,
                    "last_error": self.last_error, "folders": list(self.folders), "rescan_seconds": self.rescan}


class Watcher(FileSystemEventHandler):
    """Watches `folders` and keeps the index at `index` in step with them (see the module's doc)."""

    def __init__(self, index: Path, folders: Sequence[Path], precision: str, rescan: float = RESCAN):
        self.index, self.folders, self.precision, self.rescan = index, list(folders), precision, rescan
        self.state = IndexingState([str(folder) for folder in folders], rescan)
        self._model: EmbeddingModel | None = None
        self._changed = threading.Condition()
        self._dirty = False
        self._last_event = 0.0
        self._next_rescan = float("inf")
        self._writing: dict[str, float] = {}
        """Files the observer saw written and not closed yet: when last written (monotonic)."""
        self._held: dict[str, tuple[int, int] | None] = {}
        """Files the last build held back, as last looked at."""
        self._observer = Observer()
        self._own = os.path.realpath(index) + os.sep

    def observe(self) -> None:
        """Start collecting events (before a first build, so nothing copied in meanwhile is missed)."""
        try:
            for folder in self.folders:
                self._observer.schedule(self, str(folder), recursive=True)
            self._observer.daemon = True
            self._observer.start()
        except OSError as exc:  # inotify's limits, say (fs.inotify.max_user_watches)
            raise TusouError(f"cannot watch {', '.join(map(str, self.folders))}: {exc.strerror or exc}") from None

    def first_build(self, model: EmbeddingModel) -> None:
        """Build the index the server will serve (it has none yet), with progress; waits for another build."""
        from indexer.build import BuildLocked

        told = False
        while True:
            try:
                self._build_once(model, progress=True)
                self.state.set(last_commit=_now())  # the index's first commit is the watcher's too
                return
            except BuildLocked as exc:
                if not told:
                    print(f"tusou: {exc}; trying again every {DEBOUNCE:g} s", file=sys.stderr, flush=True)
                    told = True
                time.sleep(DEBOUNCE)

    def start(self, model: EmbeddingModel) -> None:
        """Keep the index up to date from now on, embedding with `model` (the served one)."""
        self._model = model
        with self._changed:
            self._next_rescan = time.monotonic() + self.rescan if self.rescan else float("inf")
        threading.Thread(target=self._run, name="tusou-watch", daemon=True).start()

    # --- events (the observer's thread) ---------------------------------------------------

    def dispatch(self, event: FileSystemEvent) -> None:
        if not isinstance(event, CHANGES):
            return
        paths = [os.fsdecode(p) for p in (event.src_path, getattr(event, "dest_path", "")) if p]
        if not event.is_directory and not any(is_image_path(path) for path in paths):
            return  # no index file is an image: only a folder of the index's own (an index inside a watched folder) is looked up
        if event.is_directory and all(os.path.realpath(path).startswith(self._own) for path in paths):
            return
        with self._changed:
            src = paths[0]
            if isinstance(event, FileModifiedEvent):
                self._writing[src] = time.monotonic()
            elif isinstance(event, (FileClosedEvent, FileDeletedEvent)):
                self._writing.pop(src, None)
            elif isinstance(event, FileMovedEvent) and src in self._writing:
                self._writing[os.fsdecode(event.dest_path)] = self._writing.pop(src)
            self._dirty = True
            self._last_event = time.monotonic()
            self._changed.notify_all()
        if self.state.state == "idle":
            self.state.set(state="pending")

    # --- the builds (the watcher's thread) ----------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wait_for_work()
            if not self._dirty and not self._held_still():
                continue
            with self._changed:
                self._dirty = False
                self._next_rescan = time.monotonic() + self.rescan if self.rescan else float("inf")
            self._build()

    def _wait_for_work(self) -> None:
        """Until a change, a rescan or a held file is due and DEBOUNCE seconds passed without an event."""
        with self._changed:
            while True:
                now = time.monotonic()
                if now >= self._next_rescan:
                    self._dirty = True
                if not (self._dirty or self._held):
                    self._changed.wait(self._next_rescan - now if self._next_rescan != float("inf") else None)
                    continue
                quiet = now - self._last_event
                if quiet >= DEBOUNCE:
                    return
                self._changed.wait(DEBOUNCE - quiet)

    def _held_still(self) -> bool:
        """Whether the files held back by the last build are still now (then build again), else wait a look."""
        looks = {path: _stamp(path) for path in self._held}
        still = all(looks[path] == seen and not self._being_written(path) for path, seen in self._held.items())
        self._held = looks
        if not still:
            with self._changed:
                self._changed.wait(SETTLE)
        return still

    def _being_written(self, path: str) -> bool:
        with self._changed:
            written = self._writing.get(path)
        return written is not None and time.monotonic() - written < OPEN_WRITE_SECONDS

    def _hold(self, pending: list[SourceFile]) -> set[str]:
        """Of the files a build would embed, those still being written (BuildPlan.hold): the scan was
        the first look, this (SETTLE seconds on) the second."""
        local = [source for source in pending if source.shard is None and not is_url(source.path)]
        time.sleep(SETTLE)
        with self._changed:
            now = time.monotonic()  # what has not been written for long is no longer looked up
            self._writing = {path: written for path, written in self._writing.items() if now - written < OPEN_WRITE_SECONDS}
        looks = {source.path: _stamp(source.path) for source in local}
        held = {source.path for source in local if looks[source.path] != (source.size, source.mtime_ns) or self._being_written(source.path)}
        self._held = {path: looks[path] for path in held}
        return held

    def _build(self) -> None:
        """One build; a failure is one line in the log and the state's last_error, and the server goes on."""
        from indexer.build import BuildLocked

        self.state.set(state="indexing", done=0, total=None)
        try:
            summary = self._build_once(self._model, progress=False)
        except BuildLocked:  # another `tusou index`: try again once it is quiet
            with self._changed:
                self._dirty, self._last_event = True, time.monotonic()
            self.state.set(state="pending")
            return
        except TusouError as exc:
            self._failed(str(exc))
        except Exception as exc:  # a bug or the system: the server keeps answering from the index as it is
            self._failed(f"{type(exc).__name__}: {exc}")
        else:
            changed = summary.added or summary.updated or summary.removed or summary.read
            if changed:
                print(f"tusou: watch: {summary.index}: {summary.total} images (added {summary.added}, updated {summary.updated}, "
                      f"removed {summary.removed}, skipped {len(summary.skipped)})", file=sys.stderr, flush=True)
            self.state.set(last_error=None, **({"last_commit": _now()} if changed else {}))
        with self._changed:
            waiting = self._dirty or bool(self._held)
        self.state.set(state="pending" if waiting else "idle", held=len(self._held))

    def _failed(self, message: str) -> None:
        line = " ".join(message.split())
        print(f"tusou: watch: updating {self.index} failed: {line}", file=sys.stderr, flush=True)
        self._held = {}
        self.state.set(last_error=line)

    def _build_once(self, model: EmbeddingModel, progress: bool) -> BuildSummary:
        from indexer.build import build_index
        from indexer.plan import BuildPlan

        self._held = {}
        plan = BuildPlan(self.folders, self.index, model=model, precision=self.precision, workers=0, progress=progress,
                         report=self.state.report, hold=self._hold, empty_ok=True)
        return build_index(plan)


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
