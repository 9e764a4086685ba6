"""Webdataset tar shards (img2dataset's layout: `NNNNNNNNN.jpg` beside `.txt`/`.json` per sample).

Read with the standard `tarfile` over a local file or an fsspec file object, never
extracted to disk. A shard is read front to back once per pass: members are found by
walking its headers, so opening a shard per member would cost the whole shard each time.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

from retrieval.images import is_image_path
from retrieval.locations import error_reason, open_binary, open_tar


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    mtime_ns: int


def list_images(shard: str) -> tuple[list[Member], str | None]:
    """The image members of a shard in shard order (sidecars such as .txt and .json left out), and
    why the listing stopped early, if it did: a shard cut short still gives the members before the cut."""
    members: list[Member] = []
    try:
        with open_tar(shard) as tar:
            for info in tar:
                if info.isfile() and is_image_path(info.name):
                    members.append(Member(info.name, info.size, int(info.mtime) * 10**9))
    except Exception as exc:
        return members, error_reason(shard, exc)
    return members, None


def read_images(shard: str, wanted: list[str]) -> Iterator[tuple[str, bytes | None, str | None]]:
    """(member, bytes, None) for each wanted member in shard order, then (member, None, reason)
    for each one the shard did not deliver (missing, or the shard ended early)."""
    remaining = set(wanted)
    reason = "not in the shard any more"
    try:
        with open_binary(shard) as handle, tarfile.open(fileobj=handle, mode="r|*") as tar:
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
