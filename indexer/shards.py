"""Webdataset tar shards (img2dataset's layout: `NNNNNNNNN.jpg` beside `.txt`/`.json` per sample).

Listed with the standard `tarfile` over a local file or an fsspec file object, never
extracted to disk; members are read by retrieval.locations.read_members, one pass per shard.
"""

from __future__ import annotations

from dataclasses import dataclass

from retrieval.locations import error_reason, image_members, open_tar


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
            for info, mtime_ns in image_members(tar):  # one by one: a cut shard keeps the members before the cut
                members.append(Member(info.name, info.size, mtime_ns))
    except Exception as exc:
        return members, error_reason(shard, exc)
    return members, None
