"""Redundant IVF assignment ("spill"): each vector is stored in its ``spill`` nearest lists.

A typo'd query often lands nearest to a centroid other than its true neighbour's; with the
neighbour also filed under its second-nearest centroid, far fewer lists need probing for
the same recall (docs/scaling.md has the figures). A search can then return a vector row
twice: indexes with ``spill > 1`` are always searched with exact re-rank, which drops the
repeats (:func:`~.search.rerank_exact`).

FAISS files a vector under one list per ``add``; :func:`fill` files it under several
through ``add_core`` with the assignments given. Fast-scan lists are packed in blocks and
take no ``add_core``, so a fast-scan PQ index is filled as a plain IVF-PQ twin (same
quantizer, codebooks and residual setting) and packed once at the end.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def fill(index: Any, blocks: Iterable[tuple[int, np.ndarray]], spill: int) -> Any:
    """Add ``(first_row, float32 (b, d))`` blocks to the IVF ``index``, each vector under
    its ``spill`` nearest lists, with ids ``first_row ..``; returns the filled index (a new
    object for fast-scan PQ, whose ``ntotal`` then counts every stored copy).

    With ``spill == 1`` this is a plain ``index.add`` of each block, for any FAISS index
    (ids then continue from ``index.ntotal``).
    """
    import faiss

    if spill == 1:
        for _, block in blocks:
            index.add(block)
        return index
    ivf = _bare_ivf(index)
    packed = isinstance(ivf, faiss.IndexIVFPQFastScan)
    if packed and ivf.ntotal:
        raise ValueError("spill > 1 fills only an empty fast-scan index")
    target = _plain_twin(ivf) if packed else ivf
    for first, block in blocks:
        block = np.ascontiguousarray(block, dtype=np.float32)
        _, lists = target.quantizer.search(block, spill)
        ids = np.arange(first, first + len(block), dtype=np.int64)
        for column in range(spill):
            assign = np.ascontiguousarray(lists[:, column])
            target.add_core(
                len(block), faiss.swig_ptr(block), faiss.swig_ptr(ids), faiss.swig_ptr(assign)
            )
    return _pack(target, ivf) if packed else index


def check_spill(index: Any, spill: int) -> None:
    """ValueError unless ``spill`` is 1, or ``index`` is a bare IVF index with at least
    ``spill`` lists (a pre-transform or refine wrapper would see unassigned vectors)."""
    if spill < 1:
        raise ValueError(f"spill must be >= 1, got {spill}")
    if spill > 1 and _bare_ivf(index).nlist < spill:
        raise ValueError(f"spill {spill} needs at least {spill} IVF lists")


def _bare_ivf(index: Any) -> Any:
    import faiss

    if not isinstance(index, faiss.IndexIVF):
        raise ValueError(
            "spill > 1 needs a bare IVF index (no pre-transform or refine), got "
            f"{type(index).__name__}"
        )
    return index


def _plain_twin(ivf: Any) -> Any:
    """An empty IndexIVFPQ with ``ivf``'s quantizer (a copy), codebooks and residual setting."""
    import faiss

    quantizer = faiss.clone_index(ivf.quantizer)
    twin = faiss.IndexIVFPQ(quantizer, ivf.d, ivf.nlist, ivf.pq.M, ivf.pq.nbits, ivf.metric_type)
    twin.pq = ivf.pq
    twin.by_residual = ivf.by_residual
    twin.is_trained = True
    twin.own_fields = True
    quantizer.this.disown()  # freed with the twin, or handed on by _pack
    return twin


def _pack(twin: Any, like: Any) -> Any:
    """The fast-scan index holding ``twin``'s codes, searched like ``like``."""
    import faiss

    packed = faiss.IndexIVFPQFastScan(twin, like.bbs)
    twin.own_fields = False
    packed.own_fields = True  # the quantizer passes to the packed index
    packed.nprobe = like.nprobe
    packed.implem = like.implem
    packed.qbs = like.qbs
    return packed
