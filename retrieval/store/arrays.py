"""The store's array files: checked reads and atomic writes of float16 vectors, int64 row and id
lists, and FAISS indexes.

Every read checks what it finds against what the catalog or manifest says it holds, so a damaged
file is one line naming it and the fix, never a traceback (or a wrong answer) later.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from retrieval.errors import TusouError
from retrieval.store import ann
from retrieval.store.atomic import atomic_write
from retrieval.store.full_disk import FULL_ERRNOS
from retrieval.store.index_types import INDEX_TYPES


def reindex_hint(directory: Path) -> str:
    """What to do when only a FAISS file is bad: the stored vectors rebuild it, no model needed."""
    return f"its catalog and vectors are intact: rebuild the FAISS index from them with `tusou reindex {directory}`"


def read_array(path: Path, dtype: type, ndim: int, fix: str, width: int | None = None) -> np.ndarray:
    """A .npy file, memory-mapped (an index of any size opens at once), of `dtype` and `ndim` (rows × `width`).

    allow_pickle=False: a .npy holding Python objects (or a pickle in disguise) is refused rather than unpickled.
    """
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        text = str(exc)
        why = (
            "empty" if isinstance(exc, EOFError) or path.stat().st_size == 0
            else "truncated" if "mmap length" in text
            else "holds pickled Python objects, not vectors; not loaded" if "pickle" in text or "Python objects" in text
            else "not a .npy array"
        )
        raise TusouError(f"{path} is damaged ({why}): {fix}") from None
    if not isinstance(array, np.ndarray):  # np.load returns an NpzFile for a zip archive
        raise TusouError(f"{path} is damaged (not a .npy array): {fix}")
    expected = f"{np.dtype(dtype)}" + (f" × {width}" if width else "")
    if array.dtype != dtype or array.ndim != ndim or (width is not None and array.shape[1] != width):
        raise TusouError(f"{path} is damaged (it holds {array.dtype} {' × '.join(map(str, array.shape))}, expected {expected}): {fix}")
    return array


def read_faiss(path: Path, index_type: str, dim: int, count: int, fix: str, mmap: bool = False) -> faiss.Index:
    """A FAISS file, checked against its type, dim and row count.

    `mmap` maps the vectors (codes, inverted lists) instead of reading them: what a segment's search
    uses, read-only, and a check that costs little at any size and bounds every size the file claims
    by its length.
    """
    damaged = f"{path} is damaged"
    if not path.is_file():
        raise TusouError(f"{path} is missing: {fix}")
    if path.stat().st_size == 0:
        raise TusouError(f"{damaged} (empty): {fix}")
    try:
        flags = getattr(faiss, "IO_FLAG_MMAP_IFC", 0) | faiss.IO_FLAG_READ_ONLY if mmap else 0
        index = faiss.read_index(str(path), flags)
    except (RuntimeError, MemoryError) as exc:
        why = "not a FAISS index" if "not recognized" in str(exc) else "truncated or corrupt"
        raise TusouError(f"{damaged} ({why}): {fix}") from None
    kind = type(faiss.downcast_index(index)).__name__
    expected = INDEX_TYPES[index_type].faiss_class
    if kind != expected:
        raise TusouError(f"{damaged} (it holds an {kind}; a {index_type} index is an {expected}): {fix}")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise TusouError(f"{damaged} (it does not score by inner product): {fix}")
    if index.d != dim:
        raise TusouError(f"{damaged} (it holds {index.d}-d vectors, the index is {dim}-d): {fix}")
    if index.ntotal != count:
        raise TusouError(f"{damaged} (it holds {index.ntotal} vectors, not {count}): {fix}")
    return index


def write_vectors(path: Path, shape: tuple[int, int], fill: Callable[[np.ndarray], None]) -> np.ndarray:
    """Write a float16 vectors file through `fill(out)`, which may fill `out` a block at a time, so no
    more of the vectors than a block is ever in memory; returns the file mapped read-only."""

    def write(tmp: Path) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
        _allocate(tmp)
        fill(out)
        out.flush()
        del out

    atomic_write(path, write)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _allocate(path: Path) -> None:
    """Give the (sparse) file at `path` all its blocks now. Pages written through a mapping get their
    blocks only when written, and on a full disk the kernel answers that with SIGBUS, which kills the
    build where it stands; allocated first, a full disk is an ENOSPC here instead. A file system that
    cannot allocate ahead keeps the sparse file, as before."""
    if not hasattr(os, "posix_fallocate"):  # not on macOS
        return
    with open(path, "rb+") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        except OSError as exc:
            if exc.errno in FULL_ERRNOS:
                raise


def write_array(path: Path, array: np.ndarray) -> None:
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # np.save given a path would append .npy to the temporary name
            np.save(handle, np.ascontiguousarray(array), allow_pickle=False)

    atomic_write(path, save)


def write_faiss(path: Path, index: faiss.Index) -> None:
    """Through Python's writes, not faiss's own file writer: that one ignores the error of its last
    buffered write (its fclose is not checked), so on a full disk it could leave a truncated file
    and report success; a Python write raises the ENOSPC."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write))

    atomic_write(path, write)


def tuned(index: faiss.Index, search: dict) -> faiss.Index:
    """`index` with the search knobs its build tuned applied."""
    ann.apply_params(index, search)
    return index
