"""Memory-mapped row access: gathers and prefetches read the right rows and keep RSS low."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from novelentitymatcher_faiss.artifact.arrays import (
    advise_random,
    gather_rows,
    load_array,
    prefetch,
)
from novelentitymatcher_faiss.index.search import iter_chunks, scores_of_rows

ROWS, DIM = 40_000, 256  # 40 MB of float32


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    matrix = np.random.default_rng(0).standard_normal((ROWS, DIM), dtype=np.float32)
    path = tmp_path_factory.mktemp("arrays") / "vectors.npy"
    np.save(path, matrix, allow_pickle=False)
    return path, matrix


def mapped_rss_bytes(path: Path) -> int:
    """Resident bytes of this process's mappings of ``path`` (Linux smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if not line.split(maxsplit=1)[0].endswith(":"):  # a mapping's header line
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


def test_gather_rows_equals_fancy_indexing(stored):
    path, matrix = stored
    array = load_array(path, np.float32, ndim=2)
    advise_random(array)
    rows = np.sort(np.random.default_rng(1).choice(ROWS, 5000, replace=False))
    got = gather_rows(array, rows, chunk=777)
    assert got.dtype == np.float32 and got.shape == (5000, DIM)
    np.testing.assert_array_equal(got, matrix[rows])


def test_gather_rows_works_on_arrays_in_ram(stored):
    _, matrix = stored
    rows = np.array([5, 0, 39_999, 5])
    np.testing.assert_array_equal(gather_rows(matrix, rows), matrix[rows])
    prefetch(matrix, rows)  # no mapping: nothing to do, no error
    advise_random(matrix)


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")
def test_gathering_a_sample_leaves_no_file_pages_mapped(stored):
    path, _ = stored
    array = load_array(path, np.float32, ndim=2)
    rows = np.sort(np.random.default_rng(2).choice(ROWS, 8000, replace=False))
    np.asarray(array[rows])  # plain fancy indexing keeps what it touched mapped
    touched = mapped_rss_bytes(path)
    assert touched > 4 * 8000 * DIM  # at least the rows themselves
    fresh = load_array(path, np.float32, ndim=2)
    advise_random(fresh)
    gather_rows(fresh, rows)
    assert mapped_rss_bytes(path) - touched < DIM * 4 * 64


def test_prefetched_scores_and_chunks_are_exact(stored):
    path, matrix = stored
    array = load_array(path, np.float32, ndim=2)
    advise_random(array)
    queries = matrix[[3, 17]]
    rows = np.array([[3, -1, 39_999, 12], [17, 17, 0, -1]])
    prefetch(array, rows)
    prefetch(array, slice(ROWS - 5, ROWS + 100))  # past the end: clipped
    got = scores_of_rows(queries, rows, array)
    want = np.einsum("qd,qcd->qc", queries, matrix[np.where(rows < 0, 0, rows)])
    np.testing.assert_allclose(got[rows >= 0], want[rows >= 0], rtol=1e-5)
    assert np.isneginf(got[rows < 0]).all()
    blocks = list(iter_chunks(array, 9_999))
    assert [start for start, _ in blocks] == [0, 9_999, 19_998, 29_997, 39_996]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), matrix)


def drop_from_page_cache(path: Path) -> None:
    """Evict a file's (clean) pages from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_scattered_rows_are_asked_for_once_per_page(stored):
    import mmap

    from novelentitymatcher_faiss.artifact.arrays import _asked_pages, _mapping, resident_pages

    path, _ = stored
    drop_from_page_cache(path)
    array = load_array(path, np.float32, ndim=2)
    mapping, offset = _mapping(array)
    cached = set(np.flatnonzero(resident_pages(mapping)).tolist())
    if len(cached) > 10:  # only the header page that np.load read, and a few around it
        pytest.skip("this file system keeps files in memory (tmpfs): no page is ever cold")
    rows = np.array([[7, 20_000, -1], [39_999, 7, 3]])
    prefetch(array, rows)
    asked = _asked_pages(mapping)
    page, row_bytes = mmap.PAGESIZE, DIM * 4
    want = {p for r in (3, 7, 20_000, 39_999)
            for p in range((offset + r * row_bytes) // page,
                           (offset + (r + 1) * row_bytes - 1) // page + 1)}  # fmt: skip
    assert set(np.flatnonzero(asked).tolist()) == want | cached
    prefetch(array, np.array([7, 3]))  # nothing new to ask for
    assert set(np.flatnonzero(_asked_pages(mapping)).tolist()) == want | cached


def test_pages_already_in_the_page_cache_are_not_asked_for(stored):
    from novelentitymatcher_faiss.artifact.arrays import _asked_pages, _mapping, resident_pages

    path, matrix = stored
    path.read_bytes()  # the whole file is in the page cache now
    array = load_array(path, np.float32, ndim=2)
    mapping, _ = _mapping(array)
    assert resident_pages(mapping).all()
    prefetch(array, np.array([5, 30_000]))
    assert _asked_pages(mapping).all()  # every page counts as asked: no madvise to make
    np.testing.assert_array_equal(array[[5, 30_000]], matrix[[5, 30_000]])
