"""``.npy`` helpers: pickle-free loading with checks, and streaming writes of 2-D arrays."""

from __future__ import annotations

import ctypes
import mmap
import weakref
from pathlib import Path

import numpy as np

from ..errors import ArtifactCorruptError

_HEADER_BYTES = 128  # a fixed v1.0 header, large enough for any (rows, cols) shape


def load_array(path: Path, dtype: type, ndim: int, mmap: bool = True) -> np.ndarray:
    """``np.load`` a ``.npy`` with pickle disabled, checking dtype and rank.

    Raises :class:`ArtifactCorruptError` naming ``path`` for anything unreadable.
    """
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ArtifactCorruptError(
            f"{path}: unreadable .npy ({exc}); rebuild the artifact"
        ) from None
    if array.dtype != np.dtype(dtype) or array.ndim != ndim:
        raise ArtifactCorruptError(
            f"{path}: expected {np.dtype(dtype)} with {ndim} dimension(s), "
            f"found {array.dtype} with shape {array.shape}"
        )
    return array


def release_pages(array: np.ndarray) -> None:
    """Unmap the pages of a memory-mapped ``array`` from this process (``MADV_DONTNEED``).

    They stay in the page cache and come back on the next access; streaming passes over
    files larger than RAM call this so the process's RSS does not grow with the file.
    A no-op for arrays that are not memory-mapped.
    """
    mapping = getattr(array, "_mmap", None)
    if isinstance(mapping, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


def _mapping(array: np.ndarray) -> tuple[mmap.mmap, int] | None:
    """The ``mmap`` behind a memory-mapped ``array`` and the byte offset of its first
    element inside that mapping, or None for an array in RAM."""
    mapping = getattr(array, "_mmap", None)
    if not isinstance(mapping, mmap.mmap):
        return None
    base = np.frombuffer(mapping, dtype=np.uint8).ctypes.data
    return mapping, array.ctypes.data - base


def advise_random(array: np.ndarray) -> None:
    """Tell the kernel a memory-mapped ``array`` is read at random (``MADV_RANDOM``).

    A page fault then reads that page only, not the 128 KiB around it: gathering scattered
    rows of a file larger than RAM reads what it uses and leaves the page cache (and the
    process's RSS) alone. Sequential passes ask for read-ahead themselves
    (:func:`prefetch`). A no-op for arrays in RAM.
    """
    found = _mapping(array)
    if found is not None and hasattr(mmap, "MADV_RANDOM"):
        found[0].madvise(mmap.MADV_RANDOM)


def prefetch(array: np.ndarray, rows: np.ndarray | slice) -> None:
    """Start reading ``rows`` of a memory-mapped 2-D ``array`` from disk (``MADV_WILLNEED``).

    ``rows``: a slice, or int64 row numbers of any shape (negative ones skipped). The reads
    are issued together and run in parallel; touching the rows afterwards waits for them
    instead of faulting them in one by one. Scattered rows are asked for once per page and
    mapping: a page asked for before is taken to be in the page cache (if it was evicted
    since, touching it reads it back, one page at a time), so a warm search makes no system
    call here, and neither does one whose pages were already in the page cache when the
    mapping was first prefetched from (:func:`_asked_pages`). A no-op for arrays in RAM.
    """
    found = _mapping(array)
    if found is None or not hasattr(mmap, "MADV_WILLNEED"):
        return
    mapping, offset = found
    row_bytes = array.strides[0]
    page = mmap.PAGESIZE
    if isinstance(rows, slice):
        start, stop, _ = rows.indices(len(array))
        spans = [(start, stop)] if stop > start else []
    else:
        picked = np.asarray(rows, dtype=np.int64).ravel()
        picked = picked[(picked >= 0) & (picked < len(array))]
        asked = _asked_pages(mapping)
        first = (offset + picked * row_bytes) // page
        last = (offset + (picked + 1) * row_bytes - 1) // page
        new = ~(asked[first] & asked[last])
        if not new.any():  # the usual case once the index is warm
            return
        asked[first[new]] = asked[last[new]] = True
        spans = [(int(r), int(r) + 1) for r in np.unique(picked[new])]
    for start, stop in spans:
        begin = offset + start * row_bytes
        aligned = begin - begin % page
        mapping.madvise(mmap.MADV_WILLNEED, aligned, offset + stop * row_bytes - aligned)


_ASKED: weakref.WeakKeyDictionary[mmap.mmap, np.ndarray] = weakref.WeakKeyDictionary()


def _asked_pages(mapping: mmap.mmap) -> np.ndarray:
    """bool (pages of ``mapping``,): the pages :func:`prefetch` has asked for already, or
    that were in the page cache when it first looked (:func:`resident_pages`)."""
    asked = _ASKED.get(mapping)
    if asked is None:
        asked = resident_pages(mapping)
        if asked is None:
            asked = np.zeros(-(-len(mapping) // mmap.PAGESIZE), dtype=bool)
        _ASKED[mapping] = asked
    return asked


def resident_pages(mapping: mmap.mmap) -> np.ndarray | None:
    """bool (pages of ``mapping``,): which pages are in the page cache now (``mincore(2)``,
    one call for the whole mapping: about 50 ms for 2.6 GB), or None where the system
    has no ``mincore``."""
    pages = -(-len(mapping) // mmap.PAGESIZE)
    try:
        mincore = ctypes.CDLL(None, use_errno=True).mincore
    except (OSError, TypeError, AttributeError):  # no C library handle, or no mincore
        return None
    state = np.zeros(pages, dtype=np.uint8)
    start = np.frombuffer(mapping, dtype=np.uint8).ctypes.data  # mmap: page-aligned
    if mincore(ctypes.c_void_p(start), ctypes.c_size_t(len(mapping)),
               ctypes.c_void_p(state.ctypes.data)) != 0:  # fmt: skip
        return None
    return (state & 1).astype(bool)


def gather_rows(array: np.ndarray, rows: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """``array[rows]`` as float32 (len(rows), d) in RAM, read ``chunk`` rows at a time.

    For a memory-mapped ``array`` each chunk's rows are prefetched together and its pages
    released afterwards, so gathering a sample from a file larger than RAM costs one read
    per row and keeps RSS at the size of the result.
    """
    out = np.empty((len(rows), array.shape[1]), dtype=np.float32)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        prefetch(array, part)
        out[start : start + len(part)] = array[part]
        release_pages(array)
    return out


def _header(rows: int, cols: int, dtype: np.dtype) -> bytes:
    text = repr({"descr": dtype.str, "fortran_order": False, "shape": (rows, cols)})
    body = text.encode("latin1")
    pad = _HEADER_BYTES - 10 - len(body) - 1
    if pad < 0:
        raise ValueError(f"shape ({rows}, {cols}) does not fit a {_HEADER_BYTES}-byte header")
    return (
        b"\x93NUMPY\x01\x00"
        + (_HEADER_BYTES - 10).to_bytes(2, "little")
        + body
        + b" " * pad
        + b"\n"
    )


class NpyRowWriter:
    """Append C-contiguous rows of shape (k, cols) to a ``.npy`` whose row count grows.

    The file is readable by ``np.load`` once :meth:`close` has rewritten the header.
    """

    def __init__(self, path: Path, cols: int, dtype: type = np.float32) -> None:
        self.path, self.cols, self.dtype, self.rows = path, cols, np.dtype(dtype), 0
        self._handle = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._handle.write(_header(0, cols, self.dtype))

    def append(self, block: np.ndarray) -> None:
        if block.ndim != 2 or block.shape[1] != self.cols:
            raise ValueError(f"expected rows of width {self.cols}, got shape {block.shape}")
        self._handle.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.rows += len(block)

    def close(self) -> None:
        self._handle.seek(0)
        self._handle.write(_header(self.rows, self.cols, self.dtype))
        self._handle.close()
