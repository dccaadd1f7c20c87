"""The FAISS index of a build: which kind (:func:`choose_index`, :func:`plan_index`), its
training on a seeded sample, filling it in chunks (each vector under ``spill`` lists) and
the HNSW graph over IVF centroids that searches use at large nlist.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..artifact.arrays import gather_rows
from ..artifact.files import INDEX_FILE, open_faiss_index
from .budget import BUDGET_KINDS, index_bytes, pick_kind, pq_subquantizers
from .search import ExactTopK, iter_chunks
from .spill import check_spill, fill
from .timing import StageClock

#: ``index_type="auto"`` builds an exact flat index below this many vectors, IVF above
#: (``AUTO_IVF_KIND``).
AUTO_FLAT_MAX_VECTORS = 100_000
#: The IVF kind "auto" builds: float16 codes score within 1e-4 of the exact cosine, halve the
#: index and the bytes a query scans, and leave recall as plain IVF's (docs/benchmarks.md).
AUTO_IVF_KIND = "ivf-fp16"
#: From this many IVF lists on, the coarse quantizer is an HNSW graph over the centroids:
#: assigning each of millions of vectors then costs a graph walk, not nlist inner products.
#: Measured on 8,192 centroids of 512-d (two cores), exact BLAS assignment took 1.6 s per
#: 20k vectors and the graph 0.9 s at efSearch 16 (with 9% of vectors sent to a list that
#: is not their nearest) or 4.4 s at 128 (0.05%): below this many lists, flat is better.
HNSW_QUANTIZER_MIN_NLIST = 32768
#: The HNSW coarse quantizer's efSearch, stored in the index (FAISS's default, 16, sends
#: about one vector in ten to the wrong list).
HNSW_QUANTIZER_EF = 128
#: From this many lists on, a flat coarse quantizer assigns the vectors while building (exact,
#: and fastest in batches) and is then swapped for an HNSW graph over the same centroids,
#: which answers single queries (:func:`use_graph_quantizer`). Measured on a 13M-vector
#: ``IVF8192,PQ128x4fs`` build, one query on one thread: 0.37 ms against 1.1-1.3 ms to find
#: the lists to probe, recall@1 within 0.005 at nprobe 16-32.
HNSW_SEARCH_MIN_NLIST = 8192
INDEX_TYPES = ("auto", "flat", "ivf", "ivf-fp16", "ivf-sq8", "ivf-pq", "ivf-pq-small", "hnsw")
#: Neighbours per node of the "hnsw" kind's graph (FAISS's M; 2M at the base level).
HNSW_M = 32
#: The default nlist stops growing here: k-means cost grows with nlist squared.
MAX_DEFAULT_NLIST = 8192
#: ... and stops where assigning every vector exactly (n x nlist x d multiply-adds, BLAS)
#: would pass this: about 10 minutes on two cores. 13M vectors of 512-d get 4,456 lists
#: instead of 8,192 (measured at 8,192: 17 min of adding, the largest part of the build).
MAX_ASSIGN_MULTIPLY_ADDS = 3 * 10**13
#: IVF training takes 64 vectors per list, but no more than this (and never under 40 per
#: list): k-means cost grows with sample size times nlist.
TRAIN_SAMPLE_CAP = 320_000
_ADD_CHUNK = 65536
#: Lists each vector is filed under, by kind (others: 1). "ivf-pq" files every vector under
#: its two nearest lists (:mod:`~.spill`), for twice the codes: the
#: tuned nprobe fell from 192 to 24 on 100k names (and from 384 to 192 on 1M).
DEFAULT_SPILL = {"ivf-pq": 2}


def check_index_type(index_type: str) -> None:
    """Raise ValueError unless ``index_type`` is a non-empty string (a kind of
    ``INDEX_TYPES`` or a FAISS factory string, checked when the index is made)."""
    if not isinstance(index_type, str) or not index_type:
        raise ValueError(f"index_type must be one of {INDEX_TYPES} or a FAISS factory string")


@dataclass(frozen=True)
class IndexConfig:
    """What FAISS index a build makes.

    ``index_type``: "flat", "ivf", "ivf-fp16" (float16 codes), "ivf-sq8", "ivf-pq" (4-bit
    fast-scan PQ, d/4 bytes per vector, each vector filed under its ``spill`` nearest lists
    (default 2), with exact re-rank of ``rerank`` x candidates from stored vectors, default
    4), "ivf-pq-small" (a quarter of the sub-quantizers, one list per vector), "hnsw" (an
    ``HNSW_M`` graph over the raw vectors), "auto" (flat below ``AUTO_FLAT_MAX_VECTORS``
    vectors, else ``AUTO_IVF_KIND``) or any FAISS factory string. ``nlist``: IVF lists
    (default :func:`default_nlist`). IVF indexes of ``HNSW_QUANTIZER_MIN_NLIST`` lists or
    more get an HNSW coarse quantizer; the named kinds with ``HNSW_SEARCH_MIN_NLIST`` lists
    or more are built with a flat one and then search through an HNSW graph over the same
    centroids (:func:`use_graph_quantizer`). ``spill`` > 1 (bare IVF indexes only, and
    ``rerank >= spill``, which drops the repeated rows a search then returns) files each
    vector under that many nearest lists (:mod:`.spill`). ``memory_budget`` (bytes): with
    "auto", the most accurate kind whose index fits it (flat, ivf-fp16, ivf-sq8, then
    ivf-pq-small with exact re-rank from the on-disk vectors); with an explicit kind, a
    warning when the index will not fit. ``keep_vectors``: keep ``vectors.npy`` (needed to
    re-rank and for some updates).
    """

    index_type: str = "auto"
    nlist: int | None = None
    rerank: int | None = None
    spill: int | None = None
    memory_budget: int | None = None
    keep_vectors: bool = False

    def __post_init__(self) -> None:
        check_index_type(self.index_type)
        if self.spill is not None and (not isinstance(self.spill, int) or self.spill < 1):
            raise ValueError(f"spill must be a positive int, got {self.spill!r}")


@dataclass(frozen=True)
class IndexPlan:
    """What a build makes: kind, FAISS factory string, IVF lists (0: none), the re-rank
    factor and how many lists each vector is filed under."""

    kind: str
    factory: str
    nlist: int
    rerank: int
    spill: int

    @property
    def graph(self) -> bool:
        """Whether the index is an HNSW graph (its search breadth is efSearch)."""
        return is_graph_factory(self.factory)


def plan_index(config: IndexConfig, shape: tuple[int, int]) -> IndexPlan:
    """The :class:`IndexPlan` of ``config`` for ``shape`` (n vectors, d dims)."""
    kind, factory, n_list = choose_index(config.index_type, shape[0], shape[1], config.nlist,
                                         config.memory_budget)  # fmt: skip
    rerank = config.rerank
    rerank = (4 if kind in ("ivf-pq", "ivf-pq-small") else 0) if rerank is None else rerank
    spill = DEFAULT_SPILL.get(kind, 1) if config.spill is None else config.spill
    if spill > 1 and rerank < spill:
        raise ValueError(f"spill {spill} needs rerank >= {spill} (got {rerank})")
    return IndexPlan(kind, factory, n_list, rerank, spill)


def default_nlist(n: int, d: int) -> int:
    """About 4 * sqrt(n) lists for ``n`` vectors of dimension ``d``: at most
    ``MAX_DEFAULT_NLIST`` and ``MAX_ASSIGN_MULTIPLY_ADDS / (n * d)``, and few enough that
    each list gets >= 39 training vectors."""
    cap = MAX_ASSIGN_MULTIPLY_ADDS // max(1, n * d)
    return max(1, min(int(4 * math.sqrt(n)), MAX_DEFAULT_NLIST, cap, n // 39))


def choose_index(
    index_type: str, n: int, d: int, nlist: int | None, budget: int | None = None
) -> tuple[str, str, int]:
    """Return (kind, FAISS factory string, nlist or 0) for ``n`` vectors of dimension ``d``."""
    kind = index_type
    n_list = nlist or default_nlist(n, d)
    if kind == "auto" and budget is not None:
        kind = pick_kind(n, d, n_list, budget, AUTO_FLAT_MAX_VECTORS)
    elif kind == "auto":
        kind = "flat" if n < AUTO_FLAT_MAX_VECTORS else AUTO_IVF_KIND
    elif budget is not None and kind in ("flat", *BUDGET_KINDS):
        need = index_bytes(kind, n, d, 0 if kind == "flat" else n_list)
        if need > budget:
            warnings.warn(
                f"a {kind} index of {n:,} vectors needs about {need:,} bytes, over the "
                f"memory_budget of {budget:,}; index_type='auto' would pick one that fits",
                stacklevel=3,
            )
    if kind == "flat":
        return kind, "Flat", 0
    if kind == "hnsw":
        return kind, f"HNSW{HNSW_M}", 0
    coarse = f"IVF{n_list}" + ("_HNSW32" if n_list >= HNSW_QUANTIZER_MIN_NLIST else "")
    if kind == "ivf":
        return kind, f"{coarse},Flat", n_list
    if kind == "ivf-fp16":
        return kind, f"{coarse},SQfp16", n_list
    if kind == "ivf-sq8":
        return kind, f"{coarse},SQ8", n_list
    if kind in ("ivf-pq", "ivf-pq-small"):
        # 4-bit fast-scan PQ (d/4 or d/16 bytes per vector): trains in seconds, where 8-bit
        # PQ training takes minutes on two cores, and scans several times faster than 8-bit
        # codes; exact re-rank restores the ranking.
        return kind, f"{coarse},PQ{pq_subquantizers(kind, d)}x4fs", n_list
    import faiss

    try:
        index = faiss.index_factory(d, kind, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(
            f"index_type {kind!r} is neither one of {INDEX_TYPES} nor a valid FAISS factory "
            f"string ({str(exc).splitlines()[0]})"
        ) from None
    try:
        n_list = faiss.extract_index_ivf(index).nlist
    except RuntimeError:
        n_list = 0
    return "factory", kind, n_list


def training_sample_size(factory: str, d: int) -> int:
    """How many vectors :func:`new_trained_index` trains ``factory`` on: 64 per IVF list
    up to ``TRAIN_SAMPLE_CAP`` (but 40 per list at least, and 9,984 at least), or 9,984 for
    other trained indexes."""
    import faiss

    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    try:
        n_list = faiss.extract_index_ivf(index).nlist
    except RuntimeError:
        n_list = 0
    return max(256 * 39, min(64 * n_list, max(40 * n_list, TRAIN_SAMPLE_CAP)))


def new_trained_index(factory: str, vectors: np.ndarray, seed: int, show_progress: bool):  # noqa: ANN201
    """An empty FAISS index for ``factory``, trained on a seeded sample of ``vectors``
    (float32 (n, d), may be a memmap) when it needs training."""
    import faiss

    n, d = vectors.shape
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    try:
        quantizer = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
    except RuntimeError:
        quantizer = None
    if isinstance(quantizer, faiss.IndexHNSW):
        quantizer.hnsw.efSearch = HNSW_QUANTIZER_EF
    if not index.is_trained:
        size = min(n, training_sample_size(factory, d))
        rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
        if show_progress:
            tqdm.write(f"training {factory} on {size} vectors", file=sys.stderr)
        sample = gather_rows(vectors, rows)
        index.train(sample)
    return index


def centroid_graph(ivf, ef_search: int, ef_construction: int = 40):  # noqa: ANN001, ANN201
    """An HNSW graph (M=32) over the centroids of the flat coarse quantizer of ``ivf`` (a
    faiss.IndexIVF), searched at ``ef_search``: row i is list i. ``ef_construction``: 40
    is FAISS's default."""
    import faiss

    graph = faiss.IndexHNSWFlat(ivf.d, 32, ivf.metric_type)
    graph.hnsw.efConstruction = ef_construction
    graph.hnsw.efSearch = ef_search
    graph.add(faiss.downcast_index(ivf.quantizer).reconstruct_n(0, ivf.nlist))
    return graph


def use_graph_quantizer(index) -> bool:  # noqa: ANN001 - a faiss IVF index
    """Replace the flat coarse quantizer of IVF ``index`` (in place) by an HNSW graph
    (M=32, efSearch ``HNSW_QUANTIZER_EF``) over the same centroids, for search.

    The inverted lists and codes are untouched: only how a query finds its nprobe nearest
    centroids changes, from a scan of all nlist to a graph walk. Returns False, changing
    nothing, when the quantizer is not flat.
    """
    import faiss

    ivf = faiss.extract_index_ivf(index)
    old = faiss.downcast_index(ivf.quantizer)
    if not isinstance(old, faiss.IndexFlat):
        return False
    graph = centroid_graph(ivf, HNSW_QUANTIZER_EF)
    owned = ivf.own_fields
    graph.this.disown()  # the IVF index frees it
    ivf.quantizer, ivf.own_fields = graph, True
    if owned:
        old.this.acquire()  # nothing else holds it: freed with this proxy
    return True


def train_and_add(  # noqa: ANN202 - a faiss.Index
    factory: str,
    vectors: np.ndarray,
    seed: int,
    show_progress: bool,
    trained: Any = None,
    exact: ExactTopK | None = None,
    spill: int = 1,
    clock: StageClock | None = None,
):
    """A trained index (a copy of ``trained``, else :func:`new_trained_index`) holding
    ``vectors``, added in chunks, each vector under ``spill`` lists (:func:`spill.fill`);
    each chunk also goes to ``exact``. ``clock`` times the "train" and "add" stages."""
    import faiss

    clock = clock or StageClock()
    n, d = vectors.shape
    if trained is None:
        with clock.stage("train"):
            index = new_trained_index(factory, vectors, seed, show_progress)
    elif trained.d != d or not trained.is_trained or trained.ntotal:
        raise ValueError(
            f"trained must be an empty, trained index of dimension {d}; got "
            f"d={trained.d}, trained={trained.is_trained}, ntotal={trained.ntotal}"
        )
    else:
        index = faiss.clone_index(trained)
    check_spill(index, spill)
    desc = "adding vectors" + ("" if exact is None else " (and exact search for nprobe tuning)")

    def blocks() -> Iterator[tuple[int, np.ndarray]]:
        for start, block in iter_chunks(vectors, _ADD_CHUNK):
            yield start, block
            if exact is not None:
                with clock.stage("exact top 10 (tuning)"):
                    exact.add(start, block)
            bar.update(len(block))

    with (
        clock.stage("add"),
        tqdm(total=n, desc=desc, unit=" vectors", disable=not show_progress) as bar,
    ):
        return fill(index, blocks(), spill)


def write_index(tmp: Path, index) -> str:  # noqa: ANN001 - a faiss.Index
    """Write ``index`` to ``tmp``; returns the FAISS class name it reads back as."""
    import faiss

    faiss.write_index(index, str(tmp / INDEX_FILE))
    return type(open_faiss_index(tmp / INDEX_FILE)).__name__


def is_graph_factory(factory: str) -> bool:
    """Whether a FAISS factory string builds an HNSW graph index (searched with efSearch)."""
    return factory.startswith("HNSW")
