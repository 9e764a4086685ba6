"""Recognising a full disk (or a used-up quota) in what a write raised, whichever layer raised it.

Python's own writes raise OSError with ENOSPC or EDQUOT. SQLite reports SQLITE_FULL for a page it
could not write (and rolls the transaction back itself), and SQLITE_IOERR_SHMSIZE when it could not
grow the WAL index (`-shm`) that even a reader needs: it grows it by writing one byte a page, which
fails for lack of space, not for damage. A catalog read that meets either says so (`DiskFull`),
rather than calling a healthy catalog damaged.
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from retrieval.errors import TusouError

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
SQLITE_FULL_CODES = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR_SHMSIZE})


class DiskFull(TusouError):
    """No space left where the index is, met while reading it (a writer reports what it needs instead)."""

    def __init__(self, directory: Path):
        self.directory = directory
        super().__init__(f"no space left on the disk holding {directory} (SQLite needs a little even to read the catalog): free some space and try again")


def is_full_disk(exc: BaseException) -> bool:
    """Whether `exc` means no space (or no quota) was left for a write."""
    if isinstance(exc, DiskFull):
        return True
    if isinstance(exc, OSError):
        return exc.errno in FULL_ERRNOS
    return isinstance(exc, sqlite3.Error) and exc.sqlite_errorcode in SQLITE_FULL_CODES

