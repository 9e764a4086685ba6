"""Reading an indexed image's bytes wherever they live: a local path, a URL (through fsspec), or a
member of a webdataset tar shard, named `SHARD#MEMBER` in the catalog.

Local files keep the plain `open` path; `http://`, `s3://`, `memory://`, `file://` … go through
fsspec. The UI reads a result through here to show it, and the indexer to embed it; how the
indexer lists shards and tells a changed object is in indexer/shards.py and indexer/sources.py.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from retrieval.images import file_error_reason

URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")
MEMBER_SEPARATOR = "#"
"""Between a shard and a member in a catalog path: `/data/000001.tar#000010012.jpg`."""


def is_url(location: str) -> bool:
    return bool(URL.match(location))


def is_shard(location: str) -> bool:
    return location.lower().endswith(".tar")


def split_member(path: str) -> tuple[str, str] | None:
    """(shard, member) when a catalog path names a tar member; a local file whose name merely
    looks like one (`a.tar#b.jpg` on disk) is a file."""
    shard, separator, member = path.rpartition(MEMBER_SEPARATOR)
    if not separator or not is_shard(shard) or (not is_url(path) and os.path.lexists(path)):
        return None
    return shard, member


@contextmanager
def open_tar(shard: str) -> Iterator[tarfile.TarFile]:
    """A shard to iterate member by member: a local one is seeked through; a remote one is
    streamed once (no range requests, so any server will do)."""
    with open_binary(shard) as handle, tarfile.open(fileobj=handle, mode="r|*" if is_url(shard) else "r:*") as tar:
        yield tar


def open_binary(location: str) -> IO[bytes]:
    """A binary file object for a local path or a URL; the caller closes it."""
    if is_url(location):
        import fsspec  # only for URLs: importing it costs 0.2 s that a local path never needs

        return fsspec.open(location, "rb").open()
    return open(location, "rb")


class Unreadable(Exception):
    """Bytes that cannot be had; the message is the reason, for the build's report."""


def read_bytes(location: str) -> bytes:
    """The whole object; Unreadable with a one-line reason when it cannot be read."""
    try:
        with open_binary(location) as handle:
            return handle.read()
    except Exception as exc:
        if not (is_url(location) or isinstance(exc, OSError)):
            raise
        raise Unreadable(error_reason(location, exc)) from None


def read_members(shard: str, wanted: list[str]) -> Iterator[tuple[str, bytes | None, str | None]]:
    """(member, bytes, None) for each wanted member in shard order, then (member, None, reason)
    for each one the shard did not deliver (missing, or the shard ended early). One pass over
    the shard: finding a member means walking the headers before it."""
    remaining = set(wanted)
    reason = f"not in {shard} any more"
    try:
        with open_tar(shard) as tar:
            for member in tar:
                if member.name in remaining and member.isfile():
                    data = tar.extractfile(member).read()
                    remaining.discard(member.name)
                    yield member.name, data, None
                    if not remaining:
                        return
    except Exception as exc:
        reason = error_reason(shard, exc)
    for name in wanted:
        if name in remaining:
            yield name, None, reason


def read_item(path: str) -> bytes:
    """The bytes of the image a catalog path names (a file, a URL or a shard member), for showing
    one result."""
    found = split_member(path)
    if found is None:
        return read_bytes(path)
    shard, member = found
    _, data, reason = next(read_members(shard, [member]))
    if data is None:
        raise Unreadable(reason)
    return data


def error_reason(location: str, exc: Exception) -> str:
    """Why `location` could not be read: worded like the folder scan's reasons for a local file;
    for a URL, whatever its fsspec backend raised (aiohttp, botocore … each have their own errors)."""
    if isinstance(exc, tarfile.TarError):
        return f"broken shard: {exc}".splitlines()[0]
    if not is_url(location) and isinstance(exc, OSError):
        return file_error_reason(exc)
    if isinstance(exc, FileNotFoundError):
        return "not found"
    return f"cannot fetch: {exc}".splitlines()[0]
