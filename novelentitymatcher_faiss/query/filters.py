"""Search-time filters: ``where`` (metadata conditions) and ``candidates`` (entity ids).

A :class:`Selection` is checked once per ``match`` call; each opened artifact (and each of
its layers and shards) turns it into a bool mask of its own vector rows
(:meth:`~.match_index.MatchIndex.selected_rows`), and
:func:`search_selected` searches only those rows, inside FAISS:

- few selected rows (at most ``EXACT_SCAN_MAX_ROWS``, or on an HNSW index under
  ``HNSW_MIN_FILTER_SHARE`` of them) and the vectors at hand (the stored ``vectors.npy``,
  or the raw vectors of a flat or HNSW-flat index): an exact scan of just those rows,
  blockwise;
- otherwise one FAISS search with an ``IDSelectorBitmap`` of the selected rows in its
  ``SearchParameters``: exact on flat indexes; on IVF indexes ``nprobe`` grows by the
  inverse of the selected share (so as many selected vectors are scanned as an unfiltered
  search scans vectors), up to every list; on HNSW, efSearch grows the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import QueryError
from ..index.search import ExactTopK, scores_of_rows, search

#: A single query (or up to ``EXACT_SCAN_FEW_QUERIES``) whose filter leaves at most this
#: many vector rows is answered by an exact scan of those rows when their vectors can be
#: read. At 1M 512-d vectors (ivf-fp16, nprobe 384) one query took 35 ms exact against
#: 47 ms through the selector at 130k rows, 68 against 35 ms at 260k (docs/filters.md).
EXACT_SCAN_MAX_ROWS = 150_000
#: The same for batches: one gather of the rows serves every query, so the exact scan wins
#: further (batches of 64: 2.8 against 19.6 ms per query at 130k rows, 13.1 against 11.7
#: at 650k; of 300 at 650k: 138 against 94 q/s, with recall@10 1.0 against 0.92).
EXACT_SCAN_BATCH_MAX_ROWS = 1_000_000
#: Rows per block of the exact scan of many queries (float32 blocks of this many rows x d).
EXACT_SCAN_BLOCK = 16_384
#: Exact scans of at most this many queries read the rows in place instead of gathering.
EXACT_SCAN_FEW_QUERIES = 4
#: HNSW efSearch is never raised past this by a filter.
MAX_FILTERED_EF_SEARCH = 4096
#: An HNSW walk with a filter keeping under this share of the vectors misses the best hit
#: too often (0.8 top-1 at 0.4%, tests/test_filters.py): such filters scan exactly.
HNSW_MIN_FILTER_SHARE = 0.05


@dataclass(frozen=True)
class Selection:
    """A checked filter: ``where`` {column: condition} and/or ``candidates`` (entity ids).

    ``key`` is a canonical JSON text of both, for caching the masks it gives."""

    where: tuple[tuple[str, Any], ...] = ()
    candidates: frozenset[str] | None = None
    key: str = ""


def make_selection(
    where: Mapping[str, Any] | None = None, candidates: Iterable[str] | None = None
) -> Selection | None:
    """A :class:`Selection`, or None when neither filter is given; raises
    :class:`QueryError` naming the malformed part."""
    if where is None and candidates is None:
        return None
    if where is not None and not isinstance(where, Mapping):
        raise QueryError(f"where must be a dict {{column: condition}}, got {type(where).__name__}")
    pairs = []
    for name, condition in (where or {}).items():
        if not isinstance(name, str) or not name:
            raise QueryError(f"where: column names must be non-empty strings, got {name!r}")
        pairs.append((name, _plain(condition, name)))
    ids = None
    if candidates is not None:
        if isinstance(candidates, str | bytes) or not isinstance(candidates, Iterable):
            raise QueryError("candidates must be a list of entity ids, not a single string")
        ids = frozenset(candidates)
        bad = [c for c in ids if not isinstance(c, str)]
        if bad:
            raise QueryError(f"candidates must be entity id strings, got {bad[0]!r}")
    key = json.dumps([pairs, sorted(ids) if ids is not None else None], sort_keys=True)
    return Selection(tuple(pairs), ids, key)


def _plain(condition: Any, name: str) -> Any:
    """``condition`` with sets turned into sorted lists (a JSON-able, canonical form)."""
    if isinstance(condition, set | frozenset | tuple | list):
        items = [_plain(item, name) for item in condition]
        return sorted(items, key=repr) if isinstance(condition, set | frozenset) else items
    if isinstance(condition, Mapping):
        return {str(k): _plain(v, name) for k, v in condition.items()}
    if condition is None or isinstance(condition, str | bool | int | float):
        if isinstance(condition, float) and not math.isfinite(condition):
            raise QueryError(f"where[{name!r}]: {condition!r} is not a comparable value")
        return condition
    raise QueryError(
        f"where[{name!r}]: conditions are values, lists of values or dicts of operators, "
        f"got {type(condition).__name__}"
    )


def flat_vectors(index) -> np.ndarray | None:  # noqa: ANN001 - a faiss.Index
    """The raw float32 (ntotal, d) vectors of a flat or HNSW-flat index, read in place
    (memory-mapped when the index is), else None."""
    import faiss

    if isinstance(index, faiss.IndexHNSW):
        index = faiss.downcast_index(index.storage)
    if type(index) not in (faiss.IndexFlat, faiss.IndexFlatIP) or index.ntotal == 0:
        return None
    return faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(
        index.ntotal, index.d
    )


def exact_scan(
    queries: np.ndarray, vectors: np.ndarray, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` (scores float32 (nq, k), rows int64 (nq, k), -1 padded) of
    ``queries`` float32 (nq, d) over the given ``rows`` int64 (m,) of ``vectors``.

    Up to ``EXACT_SCAN_FEW_QUERIES`` queries score the rows in place (FAISS's
    ``fvec_inner_products_by_idx``: no copy of them); more multiply blocks of gathered
    rows (BLAS), where the gather is shared by every query."""
    kk = min(k, len(rows))
    if len(queries) <= EXACT_SCAN_FEW_QUERIES:
        scores = scores_of_rows(queries, np.broadcast_to(rows, (len(queries), len(rows))),
                                vectors)  # fmt: skip
        top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        top_scores = np.take_along_axis(scores, top, 1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        local = np.take_along_axis(top, order, 1)
        scores = np.take_along_axis(top_scores, order, 1)
    else:
        exact = ExactTopK(queries, kk)
        for start in range(0, len(rows), EXACT_SCAN_BLOCK):
            block = np.asarray(vectors[rows[start : start + EXACT_SCAN_BLOCK]], np.float32)
            exact.add(start, block)
        scores, local = exact.result()
    found = np.where(local >= 0, rows[np.maximum(local, 0)], -1)
    return _padded(np.ascontiguousarray(scores, np.float32), found.astype(np.int64), k)


def _padded(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) (nq, c <= k) widened to (nq, k) with -inf / -1 (fewer rows selected
    than asked for)."""
    pad = k - rows.shape[1]
    if pad <= 0:
        return scores, rows
    return (np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf),
            np.pad(rows, ((0, 0), (0, pad)), constant_values=-1))  # fmt: skip


def filtered_breadth(index, nprobe: int | None, share: float) -> int | None:  # noqa: ANN001
    """The search breadth (IVF nprobe, HNSW efSearch) for a filter keeping ``share`` of the
    vectors: the stored breadth divided by the share, capped at every list (or
    ``MAX_FILTERED_EF_SEARCH``); None for other indexes."""
    import faiss

    if isinstance(index, faiss.IndexHNSW):
        base = nprobe or index.hnsw.efSearch
        return int(min(max(base, MAX_FILTERED_EF_SEARCH), math.ceil(base / share)))
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return nprobe
    base = nprobe or ivf.nprobe
    return int(min(ivf.nlist, math.ceil(base / share)))


def search_selected(
    index,  # noqa: ANN001 - a faiss.Index
    queries: np.ndarray,
    k: int,
    selected: np.ndarray,
    *,
    nprobe: int | None = None,
    vectors: np.ndarray | None = None,
    rerank: int = 0,
    spill: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores float32 (nq, k), rows int64 (nq, k), -1 padded) of ``queries``
    among the vector rows where ``selected`` (bool (n_vectors,)) is set; see the module
    docstring for how. ``vectors``: the artifact's stored float32 vectors, if any."""
    import faiss

    rows = np.flatnonzero(selected)
    if not len(rows):
        empty = np.empty((len(queries), 0))
        return _padded(empty.astype(np.float32), empty.astype(np.int64), k)
    source = vectors if vectors is not None else flat_vectors(index)
    share = len(rows) / len(selected)
    sparse_graph = isinstance(index, faiss.IndexHNSW) and share < HNSW_MIN_FILTER_SHARE
    few = len(queries) <= EXACT_SCAN_FEW_QUERIES
    limit = EXACT_SCAN_MAX_ROWS if few else EXACT_SCAN_BATCH_MAX_ROWS
    if source is not None and (len(rows) <= limit or sparse_graph):
        return exact_scan(queries, source, rows, k)
    bitmap = np.packbits(selected, bitorder="little")  # FAISS's bit order
    selector = faiss.IDSelectorBitmap(len(selected), faiss.swig_ptr(bitmap))
    breadth = filtered_breadth(index, nprobe, share)
    scores, found = search(
        index, queries, min(k, len(rows)), nprobe=breadth, vectors=vectors, rerank=rerank,
        selector=selector, spill=spill,
    )  # fmt: skip
    del bitmap  # the selector reads it until here
    return _padded(scores, found, k)
