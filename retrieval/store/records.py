"""What the index knows about one image: its file (stamp, content hash, pixel size) and what the
image says about itself (EXIF time, camera, place, orientation, format).

Plain data, shared by the build that makes records and the catalog that stores them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime

SHARD_MEMBER = re.compile(r"(?<=\.tar)#", re.IGNORECASE)


@dataclass
class ImageRecord:
    """What a build learns about one image file."""

    path: str
    size: int
    mtime_ns: int
    sha256: str
    width: int
    height: int
    change_key: str | None = field(default=None, kw_only=True)
    """Beside size and mtime, what changes when the image does, for images that are not plain local
    files (a remote object's ETag, a tar member's shard's stamp)."""
    taken: str | None = field(default=None, kw_only=True)
    """EXIF DateTimeOriginal as local wall-clock ISO text (`YYYY-MM-DDTHH:MM:SS`), when the image has one."""
    taken_offset: str | None = field(default=None, kw_only=True)
    """EXIF's offset of that time from UTC (`+08:00`), when recorded."""
    camera: str | None = field(default=None, kw_only=True)
    latitude: float | None = field(default=None, kw_only=True)
    longitude: float | None = field(default=None, kw_only=True)
    orientation: int | None = field(default=None, kw_only=True)
    format: str | None = field(default=None, kw_only=True)
    """jpeg, png, webp, gif, bmp, ...: what the bytes are, whatever the file is called."""

    @property
    def stamp(self) -> tuple[int, int, str | None]:
        return (self.size, self.mtime_ns, self.change_key)


@dataclass
class CatalogItem(ImageRecord):
    """One indexed image; `id` stays the same for as long as the file is in the index."""

    id: int


def mtime_taken(mtime_ns: int) -> str:
    """A file's modification time as the catalog's `taken`: local wall-clock time of this machine."""
    return datetime.fromtimestamp(mtime_ns / 1e9).strftime("%Y-%m-%dT%H:%M:%S")


def folder_of(path: str) -> str:
    """The folder an item is in: its directory (for a tar member, the shard's directory)."""
    return os.path.dirname(SHARD_MEMBER.split(path, 1)[0])
