"""Finding the images to index: folders, files, list files, tar shards, local or through fsspec.

What a PATH argument is, in this order:
- `list:FILE` — a list file: one PATH per line (blank lines and `#` comments skipped);
  a relative line is relative to the list file's folder;
- a name with `{000000..000009}` or `{a,b}` that does not exist as written — a brace pattern,
  expanded into the names it stands for;
- a name ending in `.tar` — a webdataset shard; its image members are indexed as `SHARD#MEMBER`;
- a name with a scheme (`http://`, `s3://`, `memory://`, `file://` …) — read through fsspec:
  one object, or every image under a folder-like prefix;
- anything else — a local folder (walked recursively) or file.

Each image found is a `SourceFile`: its catalog path, size, and change key. Local files keep
size + mtime_ns alone (as indexes built before these sources hold them); remote objects and
shard members add `change_key`, the store's marker (ETag, mtime …) or their shard's stamp.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import fsspec
from tqdm import tqdm

from indexer.paths import expand_paths
from indexer.shards import list_images, member_path
from retrieval.images import IMAGE_EXTENSIONS, file_error_reason, is_image_path
from retrieval.locations import MEMBER_SEPARATOR, error_reason, is_shard, is_url
from retrieval.store.faults import kill_point

SCAN_THREADS = 16
"""Specs looked at at once. A remote one costs a round trip (a HEAD request per URL, a download
per new shard), so a list of a million URLs is looked up sixteen at a time, not one by one."""
SCAN_WINDOW = 4096
"""Specs handed to the threads at a time, so a long list file never becomes a million pending futures."""
SHARD_KEY = "shard "
"""Starts the change key of a shard member: the member is as new as its shard."""
CHANGE_MARKERS = ("ETag", "etag", "md5", "Content-MD5", "mtime", "LastModified", "last_modified", "Last-Modified", "created")
"""fsspec info keys that change when an object is rewritten, most specific first (stores differ)."""


@dataclass(frozen=True)
class SourceFile:
    path: str
    """The catalog path: an absolute file path, a URL as written, or `SHARD#MEMBER`."""
    size: int
    mtime_ns: int
    change_key: str | None = None
    shard: str | None = None
    """For a shard member, the shard it is read from (its name in the shard is after the `#`)."""
    whole: bool = False
    """A remote shard not listed at scan time (listing it means downloading it): it stands for its
    members until the build reads it, and lists it in the same pass."""
    kept: bool = False
    """A shard whose stamp is the one each of its members in the index has: it stands for them,
    unchanged, not listed (a hundred million listed would cost the driver some 40 GB)."""

    @property
    def stamp(self) -> tuple[int, int, str | None]:
        return (self.size, self.mtime_ns, self.change_key)


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


Known = Callable[[str], set[str | None]]
"""The change keys of the previous catalog's items whose path starts with a prefix (Catalog.keys_under), from any thread."""


def scan(paths: list[str | os.PathLike], progress: bool = True, known: Known | None = None) -> tuple[dict[str, SourceFile], list[Skipped]]:
    """Every image under `paths` by catalog path, and those that could not be looked at.

    `known` (the previous catalog) lets a shard whose stamp has not changed be taken as the
    catalog has it (`kept`) without reading it: listing a remote shard means downloading it.
    """
    specs = expand_paths([os.fspath(path) for path in paths])
    found: dict[str, SourceFile] = {}
    skipped: list[Skipped] = []
    with tqdm(desc="scanning", unit=" files", disable=not progress, leave=False) as bar:
        for source in _sources(specs, known or (lambda prefix: set()), skipped):
            bar.update()
            kill_point("scan")
            found[source.path] = source
    return dict(sorted(found.items())), skipped


def _sources(specs: list[str], known: Known, skipped: list[Skipped]) -> Iterator[SourceFile]:
    """What each spec holds, in spec order, looked at SCAN_THREADS specs at a time."""
    look = partial(_look, known=known)
    with ThreadPoolExecutor(SCAN_THREADS, thread_name_prefix="scan") as pool:
        for start in range(0, len(specs), SCAN_WINDOW):
            for found, problems in pool.map(look, specs[start : start + SCAN_WINDOW]):
                skipped += problems
                yield from found


def _look(spec: str, known: Known) -> tuple[list[SourceFile], list[Skipped]]:
    skipped: list[Skipped] = []
    if is_shard(spec):
        found = list(_shard(spec if is_url(spec) else os.path.abspath(spec), known, skipped))
    elif is_url(spec):
        found = _remote(spec, skipped)
    else:
        found = list(_local(spec, skipped))
    return found, skipped


def _shard(shard: str, known: Known, skipped: list[Skipped]) -> Iterator[SourceFile]:
    try:
        info = remote_info(shard) if is_url(shard) else None
        key = SHARD_KEY + (remote_key(info) if info is not None else local_key(os.stat(shard)))
    except Exception as exc:
        skipped.append(Skipped(shard, error_reason(shard, exc)))
        return
    if {found for found in known(shard + MEMBER_SEPARATOR) if found and found.startswith(SHARD_KEY)} == {key}:
        yield SourceFile(shard, 0, 0, key, shard, kept=True)
        return
    if info is not None:
        yield SourceFile(shard, int(info.get("size") or 0), 0, key, shard, whole=True)
        return
    members, problem = list_images(shard)
    if problem:
        skipped.append(Skipped(shard, problem))
    for member in members:
        yield SourceFile(member_path(shard, member.name), member.size, member.mtime_ns, key, shard)


def remote_info(url: str) -> dict:
    """fsspec's info for a URL (raises FileNotFoundError when there is nothing there)."""
    fs, path = fsspec.core.url_to_fs(url)
    return fs.info(path)


def remote_key(info: dict) -> str:
    """The change key of a remote object: its size and the first change marker its store reports."""
    marker = next((f"{key}={info[key]}" for key in CHANGE_MARKERS if info.get(key) not in (None, "")), "")
    return f"size={info.get('size')};{marker}"


def local_key(info: os.stat_result) -> str:
    return f"size={info.st_size};mtime_ns={info.st_mtime_ns}"


def _remote(url: str, skipped: list[Skipped]) -> list[SourceFile]:
    """One object, or every image object under a folder-like URL (recursively, in name order)."""
    try:
        fs, root = fsspec.core.url_to_fs(url)
        info = fs.info(root)
        if info.get("type") != "directory":
            return [_remote_file(url, info)]
        found = fs.find(root, detail=True)
    except Exception as exc:
        skipped.append(Skipped(url, error_reason(url, exc)))
        return []
    return [
        _remote_file(fs.unstrip_protocol(name), found[name])
        for name in sorted(found)
        if is_image_path(name) and found[name].get("type") == "file"
    ]


def _remote_file(url: str, info: dict) -> SourceFile:
    """mtime_ns stays 0: stores report times in many forms (or none), so a time is part of the change key as reported."""
    return SourceFile(url, int(info.get("size") or 0), 0, remote_key(info))


def _local(spec: str, skipped: list[Skipped]) -> Iterator[SourceFile]:
    """Symlinked folders are not followed (no loops); symlinked files are. Only regular files
    are taken: reading a FIFO or device that happens to be named `.jpg` would block the build forever.
    """
    for candidate in _walk(spec, skipped):
        try:
            info = os.stat(candidate)
        except OSError as exc:
            skipped.append(Skipped(candidate, file_error_reason(exc)))
            continue
        if not stat.S_ISREG(info.st_mode):
            skipped.append(Skipped(candidate, "not a regular file (a pipe, socket or device)"))
            continue
        yield SourceFile(candidate, info.st_size, info.st_mtime_ns)


def _walk(root: str, skipped: list[Skipped]) -> Iterator[str]:
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        yield root
        return
    on_error = lambda exc: skipped.append(Skipped(str(exc.filename or root), file_error_reason(exc)))
    for folder, dirs, files in os.walk(root, onerror=on_error):
        dirs.sort()
        for name in sorted(files):
            if is_image_path(name):
                yield os.path.join(folder, name)


def describe_extensions() -> str:
    return ", ".join(sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS))
