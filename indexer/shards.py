"""Webdataset tar shards (img2dataset's layout: `NNNNNNNNN.jpg` beside `.txt`/`.json` per sample).

Listed with the standard `tarfile` over a local file or an fsspec file object, never
extracted to disk: at scan time (`list_images`), or while they are read when a remote shard
was never listed (`read_images`). Wanted members of a listed shard are read by
retrieval.locations.read_members, one pass per shard.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

from retrieval.images import is_image_path
from retrieval.locations import MEMBER_SEPARATOR, error_reason, open_tar


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    mtime_ns: int


def member_path(shard: str, member: str) -> str:
    """A member's catalog path, `SHARD#MEMBER` (retrieval.locations.split_member reads it back)."""
    return f"{shard}{MEMBER_SEPARATOR}{member}"


def image_members(tar: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, int]]:
    """Each image file of a shard, in shard order, with its mtime_ns (sidecars such as .txt and
    .json left out). The one place a member's stamp is read, whether a shard is listed at scan
    time or as it is read, so both give the catalog the same one."""
    for info in tar:
        if info.isfile() and is_image_path(info.name):
            yield info, int(info.mtime) * 10**9


def list_images(shard: str) -> tuple[list[Member], str | None]:
    """The image members of a shard in shard order (sidecars such as .txt and .json left out), and
    why the listing stopped early, if it did: a shard cut short still gives the members before the cut."""
    members: list[Member] = []
    try:
        with open_tar(shard) as tar:
            for info, mtime_ns in image_members(tar):  # one by one: a cut shard keeps the members before the cut
                members.append(Member(info.name, info.size, mtime_ns))
    except Exception as exc:
        return members, error_reason(shard, exc)
    return members, None


def read_images(shard: str, skip: frozenset[str] = frozenset()) -> Iterator[tuple[str, int, int, bytes | None, str | None]]:
    """(member, size, mtime_ns, bytes, None) for every image member of a shard not in `skip`, in
    shard order and in one pass (a shard that was never listed is listed as it is read); then
    ("", 0, 0, None, reason) if the shard could not be read to its end."""
    try:
        with open_tar(shard) as tar:
            for info, mtime_ns in image_members(tar):
                if info.name not in skip:
                    yield info.name, info.size, mtime_ns, tar.extractfile(info).read(), None
    except Exception as exc:
        yield "", 0, 0, None, error_reason(shard, exc)
