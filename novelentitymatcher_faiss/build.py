"""Build path: catalog -> normalize -> encode (batches) -> FAISS index -> atomic artifact.

Vectors stream to a disk-backed ``.npy`` as they are encoded, so memory holds one batch of
texts and the index itself, never several copies of the matrix.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
import warnings
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from . import __version__
from .arrays import NpyRowWriter, advise_random, gather_rows, load_array, release_pages
from .artifact import (
    FORMAT,
    FORMAT_VERSION,
    INDEX_FILE,
    MODEL_DIR,
    ROW_ENTITY_FILE,
    STAGE_GRAPH_FILE,
    VECTORS_FILE,
    atomic_directory,
    file_records,
    open_faiss_index,
    write_manifest,
)
from .budget import BUDGET_KINDS, index_bytes, parse_bytes, pick_kind, pq_subquantizers
from .catalog import MAX_TEXT_CHARS, read_catalog
from .columns import ColumnWriter
from .encoders import Encoder, load_encoder
from .errors import ArtifactError, CatalogError
from .lexical import LexicalSettings, featurize
from .normalize import NormalizerSettings, normalize_text
from .perturb import one_letter_typo
from .search import (
    EarlyStop,
    ExactTopK,
    best_of,
    fetch_count,
    hits_at_k,
    iter_chunks,
    recall_at_k,
    search,
    search_lists,
)
from .spill import check_spill, fill
from .strings import StringTable, StringTableWriter

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
#: From this many lists on, the early-stop stages (:func:`tune_early_stop`) find their lists
#: with an HNSW graph over the centroids, stored beside the index (``STAGE_GRAPH_FILE``);
#: the last, full-nprobe search keeps the exact flat quantizer. Measured on 4,558 centroids
#: of 512-d, one query asking for 49 lists: 0.25 ms against 0.66 ms flat, the graph's top 6,
#: 24 and 48 lists 99.7%, 99.1% and 98.1% the flat quantizer's (docs/benchmarks.md).
STAGE_GRAPH_MIN_NLIST = 2048
#: The stage graph's efSearch (at least the lists a search asks for) and efConstruction.
STAGE_GRAPH_EF = 64
STAGE_GRAPH_EF_CONSTRUCTION = 200
INDEX_TYPES = ("auto", "flat", "ivf", "ivf-fp16", "ivf-sq8", "ivf-pq", "ivf-pq-small", "hnsw")
#: Neighbours per node of the "hnsw" kind's graph (FAISS's M; 2M at the base level).
HNSW_M = 32
#: efSearch values tried for an HNSW index, smallest first (see :func:`_tune_nprobe`).
EF_SEARCH_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
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
#: Typo'd catalog texts that tune nprobe and early stop. Early-stop margins are set at the
#: edge of a recall budget, so more queries set them more safely: on the 100k benchmark
#: artifact (nprobe 256), plans tuned on 1,000 kept 0.980 top-1 against exact search on
#: 1,000 new typo'd names and aliases, on 3,000 0.984 (the full nprobe: 0.991; a one-off
#: check). The 1M build takes 402 s instead of 220 s.
TUNING_QUERIES = 3000
#: nprobe tuning also requires this top-1 agreement with exact search.
TOP1_TARGET = 0.99
#: Lists each vector is filed under, by kind (others: 1). "ivf-pq" files every vector under
#: its two nearest lists (:mod:`~novelentitymatcher_faiss.spill`), for twice the codes: the
#: tuned nprobe fell from 192 to 24 on 100k names (and from 384 to 192 on 1M).
DEFAULT_SPILL = {"ivf-pq": 2}
#: Early stopping (:class:`~novelentitymatcher_faiss.search.EarlyStop`) may lose at most this
#: much of the full nprobe's recall@1 on the tuning queries, and fall at most this far under
#: the recall@1 target nprobe is tuned to (0.99 -> 0.985), measured on all the tuning queries:
#: a floor of 0.985 on the held-out half alone left no plan at 1M with the name map (full
#: nprobe 0.990 on all; the best plan kept 0.9847 on that half). On the 1M benchmark
#: artifact without the map (full nprobe 0.993) a floor of 0.99 left 0.003 and kept plans
#: whose median single query scanned 64-130 lists (1.3-2.4 ms library search); this budget
#: kept 12, 96, then 256 lists (0.60 ms on two threads), 0.997 top-1 against exact search on
#: 2,000 new typo'd names ...
EARLY_STOP_MAX_LOSS = 0.005
#: ... and is kept only when it probes at most this share of nprobe's lists per query.
EARLY_STOP_MAX_COST = 0.75
#: Early stop probes in at most this many stages before the full nprobe (with 3,000 tuning
#: queries a fourth stage did not lower the median single query at 1M: 0.70 against 0.62
#: ms for the library search, a one-off check) ...
EARLY_STOP_MAX_STAGES = 3
#: ... and counts each stage searched as scanning this many vectors more (a search call, its
#: re-rank and bookkeeping), so a stage is added only where it saves more than that.
EARLY_STOP_STAGE_VECTORS = 256
#: Shares of the recall budget tried for the first of several stages (besides an even
#: split): a first stage allowed more of the loss stops more queries after the fewest lists.
EARLY_STOP_FIRST_SHARES = (0.5, 0.75)
#: Early stop is measured only from this stored nprobe on (below it, probing is cheap) and
#: with at least this many tuning queries (fewer make a noisy stop margin).
EARLY_STOP_MIN_NPROBE = 16
EARLY_STOP_MIN_QUERIES = 800


def build_index(
    entities: Iterable[Mapping[str, Any]] | str | Path,
    path: str | Path,
    *,
    model: str = "potion-8m",
    embedding_dim: int | None = None,
    index_type: str = "auto",
    normalize: bool | NormalizerSettings = True,
    batch_size: int = 1024,
    show_progress: bool = True,
    overwrite: bool = False,
    bundle_model: bool = False,
    nlist: int | None = None,
    nprobe: int | None = None,
    rerank: int | None = None,
    keep_vectors: bool = False,
    lexical: LexicalSettings | bool | None = True,
    target_recall: float = 0.95,
    target_top1: float = TOP1_TARGET,
    seed: int = 0,
    encoder: Encoder | None = None,
    extra_manifest: Mapping[str, Any] | None = None,
    trained: Any = None,
    memory_budget: str | int | None = None,
    spill: int | None = None,
    early_stop: bool = True,
    stage_graph: bool | None = None,
):  # noqa: ANN201 - returns MatchIndex (imported lazily to avoid a cycle)
    """Encode ``entities`` and write a memory-mappable FAISS artifact to ``path``.

    ``index_type``: "flat", "ivf", "ivf-fp16" (float16 codes), "ivf-sq8", "ivf-pq" (4-bit
    fast-scan PQ, d/4 bytes per vector, each vector filed under its ``spill`` nearest lists
    (default 2), with exact re-rank of ``rerank`` x candidates from stored vectors, default
    4), "ivf-pq-small" (a quarter of the sub-quantizers, one list per vector), "hnsw"
    (an ``HNSW_M`` graph over the raw vectors), "auto" (flat below ``AUTO_FLAT_MAX_VECTORS``
    vectors, else "ivf-fp16") or any FAISS factory string. For IVF
    indexes ``nprobe`` (for HNSW indexes efSearch, stored as ``ef_search`` and tried from
    ``EF_SEARCH_GRID``) defaults to the smallest value whose recall@10 against exact search
    (FAISS's R@10: the exact nearest neighbour is among the 10 returned), on typo'd samples
    of the catalog's own texts, reaches ``target_recall``, and whose recall@1 (the top hit is
    the exact one) reaches ``target_top1``. ``trained``: an empty, trained FAISS index of
    the same factory to fill instead of training one (shards of a distributed build share
    their coarse quantizer that way). ``memory_budget`` (bytes, or ``"2GB"``, ``"512MiB"``):
    with ``index_type="auto"`` the most accurate kind whose index fits it (flat, ivf-fp16,
    ivf-sq8, then ivf-pq-small with exact re-rank from the on-disk vectors); with an explicit kind,
    a warning when the index will not fit. IVF indexes of ``HNSW_QUANTIZER_MIN_NLIST`` lists
    or more get an HNSW coarse quantizer; the named kinds with ``HNSW_SEARCH_MIN_NLIST``
    lists or more are built with a flat one and then search through an HNSW graph over the
    same centroids (:func:`use_graph_quantizer`). ``spill`` > 1 (bare IVF indexes only, and
    ``rerank >= spill``, which drops the repeated rows a search then returns) files each
    vector under that many nearest lists (:mod:`~novelentitymatcher_faiss.spill`).
    ``early_stop``: IVF indexes also measure staged probing for top-1 queries
    (:func:`tune_early_stop`) and store it when it saves work. ``stage_graph``: its stages
    find their lists with an HNSW graph over the centroids (:func:`centroid_graph`, stored
    as ``STAGE_GRAPH_FILE``); default from ``STAGE_GRAPH_MIN_NLIST`` lists on, for indexes
    with a flat coarse quantizer.
    Returns the opened :class:`~novelentitymatcher_faiss.match_index.MatchIndex`.
    """

    started = time.perf_counter()
    settings = (
        normalize
        if isinstance(normalize, NormalizerSettings)
        else NormalizerSettings(bool(normalize))
    )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _check_index_type(index_type)
    if spill is not None and (not isinstance(spill, int) or spill < 1):
        raise ValueError(f"spill must be a positive int, got {spill!r}")
    budget = None if memory_budget is None else parse_bytes(memory_budget)
    lexical = resolve_lexical(lexical)
    if encoder is None:
        encoder = load_encoder(model, embedding_dim=embedding_dim, show_progress=show_progress)
    with atomic_directory(Path(path), overwrite=overwrite) as tmp:
        counts, columns = _encode_catalog(
            entities, tmp, encoder, lexical, settings, batch_size, show_progress
        )
        vectors = load_array(tmp / VECTORS_FILE, np.float32, ndim=2)
        advise_random(vectors)  # samples and re-ranks gather rows: no read-around
        kind, factory, n_list = _choose_index(
            index_type, len(vectors), vectors.shape[1], nlist, budget
        )
        rerank = (4 if kind in ("ivf-pq", "ivf-pq-small") else 0) if rerank is None else rerank
        spill = DEFAULT_SPILL.get(kind, 1) if spill is None else spill
        if spill > 1 and rerank < spill:
            raise ValueError(f"spill {spill} needs rerank >= {spill} (got {rerank})")
        # the add pass also finds the exact top 10 of the tuning queries: one read of the
        # vectors, not two
        graph = is_graph_factory(factory)
        exact = (
            ExactTopK(_typo_queries(tmp, encoder, lexical, settings, seed), min(10, len(vectors)))
            if n_list or graph
            else None
        )
        index = _train_and_add(factory, vectors, seed, show_progress, trained, exact, spill)
        if kind in INDEX_TYPES and n_list >= HNSW_SEARCH_MIN_NLIST:
            use_graph_quantizer(index)  # before tuning: nprobe is tuned on the search path
        tuning: list[dict[str, float]] = []
        if exact is not None:
            nprobe, tuning = _tune_nprobe(
                index,
                vectors,
                exact,
                list(EF_SEARCH_GRID) if graph else _nprobe_grid(n_list),
                nprobe,
                (target_recall, target_top1),
                rerank,
                show_progress,
                spill,
            )
        import faiss

        early, early_tuning = None, []
        if early_stop and n_list and not graph:
            stages = _stage_graph(index, stage_graph)
            early, early_tuning = tune_early_stop(
                index, vectors, exact, nprobe, _nprobe_grid(n_list), target_top1, rerank, spill,
                stages,
            )  # fmt: skip
            if early is not None and stages is not None:
                early = replace(early, graph_ef_search=STAGE_GRAPH_EF)
                faiss.write_index(stages, str(tmp / STAGE_GRAPH_FILE))
        faiss.write_index(index, str(tmp / INDEX_FILE))
        faiss_class = type(open_faiss_index(tmp / INDEX_FILE)).__name__
        del index, vectors
        if not (keep_vectors or rerank > 1):
            (tmp / VECTORS_FILE).unlink()
        if bundle_model:
            shutil.copytree(encoder.path, tmp / MODEL_DIR)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "faiss_version": faiss.__version__,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "model": {
                "name": encoder.model_name,
                "alias": encoder.spec.alias,
                "id": encoder.spec.model_id,
                "backend": encoder.backend,
                "fingerprint": encoder.fingerprint,
                "native_dim": encoder.native_dim,
                "dim": encoder.dim,
                "bundled": bool(bundle_model),
            },
            "normalizer": settings.to_dict(),
            "lexical": lexical.to_dict() if lexical else None,
            "index_dim": encoder.dim + (lexical.width if lexical else 0),
            "max_text_chars": MAX_TEXT_CHARS,
            "metric": "inner_product",
            "vectors_normalized": True,
            "index": {
                "type": kind,
                "factory": factory,
                "faiss_class": faiss_class,
                "nlist": n_list,
                "nprobe": nprobe if n_list else None,
                "nprobe_tuning": [] if graph else tuning,
                "ef_search": nprobe if graph else None,
                "ef_search_tuning": tuning if graph else [],
                "rerank": rerank,
                "spill": spill,
                "early_stop": early.to_dict() if early else None,
                "early_stop_tuning": early_tuning,
                "vectors_stored": (tmp / VECTORS_FILE).exists(),
                "memory_budget": budget,
            },
            "counts": counts,
            "columns": columns,
            "build_seconds": round(time.perf_counter() - started, 3),
            **dict(extra_manifest or {}),
        }
        manifest["files"] = file_records(tmp)
        write_manifest(tmp, manifest)
    return _open_fresh(Path(path))


def _stage_graph(index, wanted: bool | None):  # noqa: ANN001, ANN202 - faiss objects
    """The early-stop stage graph for IVF ``index`` (:func:`centroid_graph`), or None:
    ``wanted`` None means from ``STAGE_GRAPH_MIN_NLIST`` lists on. Only a flat coarse
    quantizer gets one."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    if not isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat):
        return None
    if not (ivf.nlist >= STAGE_GRAPH_MIN_NLIST if wanted is None else wanted):
        return None
    return centroid_graph(ivf, STAGE_GRAPH_EF, STAGE_GRAPH_EF_CONSTRUCTION)


def _open_fresh(path: Path):  # noqa: ANN202 - MatchIndex
    """Open the artifact just written; retry briefly if a concurrent build swaps it meanwhile."""
    from .match_index import load_index

    for attempt in range(5):
        try:
            return load_index(path)
        except ArtifactError:
            if attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))


def resolve_lexical(lexical: LexicalSettings | bool | None) -> LexicalSettings | None:
    """``True`` -> default settings, ``False``/``None`` -> dense only."""
    if isinstance(lexical, LexicalSettings):
        return lexical
    return LexicalSettings() if lexical else None


def _check_index_type(index_type: str) -> None:
    if not isinstance(index_type, str) or not index_type:
        raise ValueError(f"index_type must be one of {INDEX_TYPES} or a FAISS factory string")


class CatalogWriter:
    """Streams entities into an artifact folder: string tables, row map and ``vectors.npy``.

    :meth:`add` normalizes an entity's name and aliases (duplicates dropped) and encodes them
    in batches; :meth:`add_copied` copies entities from another artifact, whose vector rows
    the caller appends with :meth:`append_vectors` (updates reuse vectors that way). Rows
    keep the order entities arrive in.
    """

    def __init__(
        self,
        tmp: Path,
        encoder: Encoder,
        lexical: LexicalSettings | None,
        settings: NormalizerSettings,
        batch_size: int,
    ) -> None:
        self.encoder, self.lexical, self.settings = encoder, lexical, settings
        self.batch_size = batch_size
        self.tmp = tmp
        self.ids = StringTableWriter(tmp, "ids")
        self.records = StringTableWriter(tmp, "entities", ext=".jsonl")
        self.texts = StringTableWriter(tmp, "texts")
        self.vectors = NpyRowWriter(
            tmp / VECTORS_FILE, encoder.dim + (lexical.width if lexical else 0)
        )
        self.columns = ColumnWriter(tmp)
        self.columns_section: dict[str, Any] | None = None  # set by close()
        self.row_entity = array("q")
        self.max_per_entity = 0
        self._batch: list[str] = []

    def add(self, entity: Mapping[str, Any]) -> None:
        """Add a validated entity, encoding its distinct normalized texts."""
        row = len(self.ids)
        seen: set[str] = set()
        for text in (entity["name"], *entity["aliases"]):
            norm = normalize_text(text[:MAX_TEXT_CHARS], self.settings)
            if norm and norm not in seen:
                seen.add(norm)
                self.texts.add(text)
                self.row_entity.append(row)
                self._batch.append(norm)
        if not seen:
            raise CatalogError(
                f"entity {row + 1} ({entity['id']!r}): name and aliases normalize to empty text"
            )
        self._add_record(entity["id"], json.dumps(entity, ensure_ascii=False) + "\n", len(seen))
        self.columns.add(entity)
        if len(self._batch) >= self.batch_size:
            self._flush()

    def add_copied(self, source: Path, keep: np.ndarray, rows_per_entity: np.ndarray) -> None:
        """Add, in bulk, the entities of artifact folder ``source`` where ``keep`` is set.

        ``keep`` bool (n_entities,); ``rows_per_entity`` int64 (n_entities,) their vector
        row counts. Their vector rows are the caller's to append (:meth:`append_vectors`).
        """
        self._flush()
        records = StringTable(source, "entities", ext=".jsonl")
        self.ids.add_rows(StringTable(source, "ids"), keep)
        self.records.add_rows(records, keep)
        for row in np.flatnonzero(keep).tolist():
            self.columns.add(json.loads(records[row]))
        self.texts.add_rows(StringTable(source, "texts"), np.repeat(keep, rows_per_entity))
        counts = rows_per_entity[keep]
        first = len(self.ids) - len(counts)
        self.row_entity.extend(np.repeat(np.arange(first, first + len(counts)), counts).tolist())
        if len(counts):
            self.max_per_entity = max(self.max_per_entity, int(counts.max()))

    def append_vectors(self, block: np.ndarray) -> None:
        """Append ready-made vector rows, float32 (n, dim), for entities added by copy."""
        self.vectors.append(block)

    def close(self) -> dict[str, int]:
        """Encode what is pending, close every file; returns the manifest's counts (and
        sets :attr:`columns_section`, the manifest's ``columns``)."""
        self._flush()
        self.columns_section = self.columns.close()
        for writer in (self.ids, self.records, self.texts, self.vectors):
            writer.close()
        np.save(
            self.tmp / ROW_ENTITY_FILE,
            np.frombuffer(self.row_entity, dtype=np.int64),
            allow_pickle=False,
        )
        return {
            "entities": len(self.ids),
            "vectors": len(self.texts),
            "max_vectors_per_entity": self.max_per_entity,
        }

    def _add_record(self, entity_id: str, record: str, rows: int) -> None:
        self.max_per_entity = max(self.max_per_entity, rows)
        self.ids.add(entity_id)
        self.records.add(record)

    def _flush(self) -> None:
        if self._batch:
            self.vectors.append(
                featurize(self._batch, self.encoder, self.lexical, self.batch_size)
            )
            self._batch.clear()


def _encode_catalog(
    entities: Iterable[Mapping[str, Any]] | str | Path,
    tmp: Path,
    encoder: Encoder,
    lexical: LexicalSettings | None,
    settings: NormalizerSettings,
    batch_size: int,
    show_progress: bool,
) -> tuple[dict[str, int], dict[str, Any]]:
    """Stream entities into the string tables, metadata columns and ``vectors.npy`` (their
    texts encoded); returns the manifest's counts and columns sections."""
    writer = CatalogWriter(tmp, encoder, lexical, settings, batch_size)
    total = (
        len(entities) if hasattr(entities, "__len__") and not isinstance(entities, str) else None
    )
    bar = tqdm(total=total, desc="encoding catalog", unit=" entities", disable=not show_progress)
    for entity in read_catalog(entities):
        writer.add(entity)
        bar.update(1)
    bar.close()
    counts = writer.close()
    return counts, writer.columns_section


def default_nlist(n: int, d: int) -> int:
    """About 4 * sqrt(n) lists for ``n`` vectors of dimension ``d``: at most
    ``MAX_DEFAULT_NLIST`` and ``MAX_ASSIGN_MULTIPLY_ADDS / (n * d)``, and few enough that
    each list gets >= 39 training vectors."""
    cap = MAX_ASSIGN_MULTIPLY_ADDS // max(1, n * d)
    return max(1, min(int(4 * math.sqrt(n)), MAX_DEFAULT_NLIST, cap, n // 39))


def _choose_index(
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
            tqdm.write(f"training {factory} on {size} vectors")
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


def _train_and_add(  # noqa: ANN202 - a faiss.Index
    factory: str,
    vectors: np.ndarray,
    seed: int,
    show_progress: bool,
    trained: Any = None,
    exact: ExactTopK | None = None,
    spill: int = 1,
):
    """A trained index (a copy of ``trained``, else :func:`new_trained_index`) holding
    ``vectors``, added in chunks, each vector under ``spill`` lists (:func:`spill.fill`);
    each chunk also goes to ``exact``."""
    import faiss

    n, d = vectors.shape
    if trained is None:
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
                exact.add(start, block)
            bar.update(len(block))

    with tqdm(total=n, desc=desc, unit=" vectors", disable=not show_progress) as bar:
        return fill(index, blocks(), spill)


def _typo_queries(
    tmp: Path,
    encoder: Encoder,
    lexical: LexicalSettings | None,
    settings: NormalizerSettings,
    seed: int,
) -> np.ndarray:
    """Encode one-letter-typo versions of up to 1000 of the catalog's texts, float32 (q, d).

    Texts a typo cannot change (codes, numbers) are skipped: they would inflate the recall.
    """
    texts = StringTable(tmp, "texts")
    rng = random.Random(seed)
    rows = rng.sample(range(len(texts)), min(TUNING_QUERIES * 4, len(texts)))
    queries: list[str] = []
    for row in rows:
        text = texts[row][:MAX_TEXT_CHARS]
        typo = normalize_text(one_letter_typo(text, rng), settings)
        if typo and typo != normalize_text(text, settings):
            queries.append(typo)
        if len(queries) == TUNING_QUERIES:
            break
    return featurize(queries or [normalize_text(texts[0], settings) or " "], encoder, lexical)


def _nprobe_grid(nlist: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, ... (steps of about 1.5x) up to and including ``nlist``."""
    grid = {nlist}
    for i in range(nlist.bit_length() + 1):
        grid.update(v for v in (2**i, 3 * 2**i // 2) if v < nlist)
    return sorted(grid)


def is_graph_factory(factory: str) -> bool:
    """Whether a FAISS factory string builds an HNSW graph index (searched with efSearch)."""
    return factory.startswith("HNSW")


def _tune_nprobe(
    index,  # noqa: ANN001
    vectors: np.ndarray,
    exact: ExactTopK,
    grid: list[int],
    fixed: int | None,
    targets: tuple[float, float],
    rerank: int,
    show_progress: bool = False,
    spill: int = 1,
) -> tuple[int, list[dict[str, float]]]:
    """Smallest search breadth of ``grid`` (nprobe for IVF, efSearch for HNSW) with
    recall@10 >= ``targets[0]`` and recall@1 >= ``targets[1]`` for ``exact``'s queries,
    against its exact top-k (already fed every row of ``vectors``).

    recall@10 is FAISS's R@10 (the exact top hit is among the 10 returned) and recall@1 the
    share of exact top hits; both tie-aware. The table also keeps 10-recall@10 (the share of
    the exact top 10 returned) for information. With ``fixed`` only that value is measured.
    """
    import faiss

    knob = "ef_search" if isinstance(index, faiss.IndexHNSW) else "nprobe"
    target, top1 = targets
    queries, k = exact.queries, exact.k
    truth, _ = exact.result()
    options = {"vectors": vectors, "rerank": rerank, "spill": spill}
    candidates = [fixed] if fixed else grid
    table = []
    for breadth in candidates:
        _, found = search(index, queries, k, nprobe=breadth, **options)
        at_10 = recall_at_k(queries, found, truth[:, :1], vectors)
        first = found[:, :1]  # without re-rank, the top-10 search's first column is top-1
        if rerank > 1:  # re-ranking fetches a different candidate count for k=1
            _, first = search(index, queries, 1, nprobe=breadth, **options)
        at_1 = recall_at_k(queries, first, truth[:, :1], vectors)
        table.append(
            {
                knob: breadth,
                "recall_at_1": round(at_1, 4),
                "recall_at_10": round(at_10, 4),
                "recall_10_at_10": round(recall_at_k(queries, found, truth, vectors), 4),
            }
        )
        release_pages(vectors)  # re-ranked rows were read through the memory map
        if show_progress:
            tqdm.write(f"{knob} {breadth}: recall@10 {at_10:.3f}, recall@1 {at_1:.3f}")
        if at_10 >= target and at_1 >= top1:
            return breadth, table
    if not fixed:
        advice = (
            "the graph misses neighbours (duplicate texts can cut it apart): use a larger M "
            "or flat"
            if knob == "ef_search"
            else "the codes are too coarse: use rerank, a finer index type, or flat"
        )
        warnings.warn(
            f"no {knob} up to {candidates[-1]} reached recall@10 {target} and recall@1 {top1} "
            f"(best {table[-1]}); {advice}",
            stacklevel=3,
        )
    return candidates[-1], table


def tune_early_stop(
    index,  # noqa: ANN001 - a faiss.IndexIVF
    vectors: np.ndarray,
    exact: ExactTopK,
    nprobe: int,
    grid: list[int],
    target_top1: float,
    rerank: int,
    spill: int = 1,
    stage_quantizer=None,  # noqa: ANN001 - a faiss.Index over the centroids
) -> tuple[EarlyStop | None, list[dict[str, Any]]]:
    """Staged probing (:class:`EarlyStop`) for top-1 searches at ``nprobe``, or None.

    None below ``EARLY_STOP_MIN_NPROBE`` or ``EARLY_STOP_MIN_QUERIES``. For each breadth
    of ``grid`` up to ``nprobe // 2``, the tuning queries of ``exact`` give each query's
    best hit within that many nearest lists, whether it is the exact top hit, and its
    margin over the centroid score of the next list. Every plan of 1 to
    ``EARLY_STOP_MAX_STAGES`` breadths, with each share of the recall budget in
    ``EARLY_STOP_FIRST_SHARES`` for its first stage, is scored by :func:`plan_early_stop`;
    the usable plan ranked lowest by :func:`plan_rank` is kept, if its lists per query are
    at most ``EARLY_STOP_MAX_COST * nprobe``. Returns it and a table: every one-stage plan,
    then the lowest-ranked plan of each longer length. The stages' lists are
    those ``stage_quantizer`` (default: the index's coarse quantizer) finds, as in search.
    """
    import faiss

    queries = exact.queries
    firsts = [g for g in grid if g <= nprobe // 2]
    if not firsts or nprobe < EARLY_STOP_MIN_NPROBE or len(queries) < EARLY_STOP_MIN_QUERIES:
        return None, []
    truth = exact.result()[0][:, :1]
    options = {"vectors": vectors, "rerank": rerank, "spill": spill}
    _, rows = search(index, queries, 1, nprobe=nprobe, **options)
    full = hits_at_k(queries, rows, truth, vectors)
    ivf = faiss.extract_index_ivf(index)
    quantizer = ivf.quantizer if stage_quantizer is None else stage_quantizer
    coarse, lists = quantizer.search(queries, firsts[-1] + 1)
    fetch = fetch_count(ivf.ntotal, 1, rerank, spill)
    exact_rows = vectors if fetch > 1 else None
    margins, hits = {}, {}
    for first in firsts:
        found = search_lists(ivf, queries, fetch, lists[:, :first], coarse[:, :first])
        scores, rows = best_of(queries, *found, exact_rows)
        margins[first] = scores[:, 0] - coarse[:, first]
        hits[first] = hits_at_k(queries, rows, truth, vectors)
    release_pages(vectors)
    call_lists = EARLY_STOP_STAGE_VECTORS * ivf.nlist / max(1, ivf.ntotal)
    plans = [
        plan_early_stop(stages, margins, hits, full, nprobe, target_top1, call_lists, share)
        for size in range(1, EARLY_STOP_MAX_STAGES + 1)
        for stages in combinations(firsts, size)
        for share in sorted({1 / size, *(s for s in EARLY_STOP_FIRST_SHARES if size > 1)})
    ]

    table = [plan for plan in plans if not plan["then"]]
    for size in range(2, EARLY_STOP_MAX_STAGES + 1):
        longer = [p for p in plans if len(p["then"]) == size - 1 and p["usable"]]
        table += [min(longer, key=plan_rank)] if longer else []
    usable = [plan for plan in table if plan["usable"]]
    best = min(usable, key=plan_rank) if usable else None
    if best is None or best["lists_per_query"] > EARLY_STOP_MAX_COST * nprobe:
        return None, table
    return EarlyStop.from_dict(best), table


def plan_rank(plan: dict[str, Any]) -> float:
    """How an early-stop plan of :func:`plan_early_stop` is ranked, lowest best: its mean
    ``cost`` (which sets batch throughput) plus its median ``p50_cost`` (single-query
    latency). By the mean alone, plans that stop the median query late cost about as much
    as ones that stop it after a few lists (1M typo'd names: 63.1 against 62.4 lists per
    query, but 4.9 against 25.8 for the median query)."""
    return plan["cost"] + plan["p50_cost"]


def plan_early_stop(
    stages: tuple[int, ...],
    margins: dict[int, np.ndarray],
    hits: dict[int, np.ndarray],
    full: np.ndarray,
    nprobe: int,
    target_top1: float,
    call_lists: float,
    first_share: float | None = None,
) -> dict[str, Any]:
    """Margins and figures of probing in ``stages`` (breadths, narrowest first) before the
    full ``nprobe``, for q tuning queries: ``margins[b]`` float32 (q,) their best score
    within b lists minus the centroid score of list b + 1, ``hits[b]`` and ``full``
    float (q,) whether that hit (or the full nprobe's) is the exact top hit.

    The margins are set stage by stage on the first half of the queries: each the lowest
    (:func:`lowest_safe_margin`) that keeps recall@1, with the queries stopped so far scoring
    their stage's hit and the rest the full nprobe's, at least the full recall@1 minus the
    stages' share so far of ``EARLY_STOP_MAX_LOSS`` (the first stage's is ``first_share``,
    default an even split, the later ones share the rest evenly), and never more loss than
    keeps the full recall@1 of all the queries at ``target_top1 - EARLY_STOP_MAX_LOSS``.
    The plan is ``usable`` when some query stops and the held-out second half keeps the
    whole budget. ``cost`` and ``p50_cost``
    are the mean and median over the queries of the lists scanned plus ``call_lists`` for
    every stage searched (a search call, its re-rank and bookkeeping, in lists).
    """
    n = len(full)
    tune = np.arange(n) < n // 2
    got, lists, calls = full.astype(float), np.full(n, float(nprobe)), np.ones(n)
    going = np.ones(n, dtype=bool)

    # the loss a part may take against the full nprobe on that same part: its share of the
    # budget, and never more than keeps the full recall@1 of all queries over target - budget
    # (measured on all queries: a half's own full recall is noisier than the budget)
    headroom = max(0.0, float(full.mean()) - (target_top1 - EARLY_STOP_MAX_LOSS))

    def floor(part: np.ndarray, share: float) -> float:
        return float(full[part].mean()) - min(EARLY_STOP_MAX_LOSS * share, headroom)

    first_share = 1 / len(stages) if first_share is None else first_share
    chosen = []
    for i, breadth in enumerate(stages):
        rest = going & tune
        kept = got[tune & ~going].sum()  # recall already fixed by earlier stops
        share = first_share + (1 - first_share) * i / max(1, len(stages) - 1)
        wanted = (floor(tune, share) * tune.sum() - kept) / max(1, rest.sum())
        margin = 2.0
        if rest.any():
            margin = max(-2.0, lowest_safe_margin(margins[breadth][rest], hits[breadth][rest],
                                                  full[rest], wanted))  # fmt: skip
        stop = going & (margins[breadth] >= margin)
        got[stop], lists[stop], calls[going] = hits[breadth][stop], breadth, i + 1
        going &= ~stop
        chosen.append((breadth, margin))
    calls[going] += 1  # the last search, over the rest of the nprobe lists
    held, spent = ~tune, lists + call_lists * calls
    first, first_margin = chosen[0]
    return {
        "nprobe": first, "margin": first_margin,
        "then": [{"nprobe": b, "margin": m} for b, m in chosen[1:]],
        "recall_at_1": round(float(hits[first].mean()), 4),
        "stopped": round(float(1 - going.mean()), 4),
        "lists_per_query": round(float(lists.mean()), 2),
        "cost": round(float(spent.mean()), 2), "p50_cost": round(float(np.median(spent)), 2),
        "first_share": round(first_share, 4),
        "held_out_recall_at_1": round(float(got[held].mean()), 4),
        "usable": bool(not going.all() and got[held].mean() >= floor(held, 1.0)),
    }  # fmt: skip


def lowest_safe_margin(
    margins: np.ndarray, hits: np.ndarray, full: np.ndarray, floor: float
) -> float:
    """The lowest stop margin for first-pass ``margins`` float32 (q,) whose mixed recall@1
    (``hits`` (q,) for queries that stop, ``full`` (q,) for the others) is at least
    ``floor`` for it and for every higher margin; 2.0 (no query stops) when there is none."""
    order = np.argsort(-margins, kind="stable")
    change = np.concatenate([[0.0], np.cumsum(hits[order] - full[order])])
    recall = (full.sum() + change) / len(margins)  # recall when the best m queries stop
    failing = np.flatnonzero(recall < floor - 1e-9)
    m = int(failing[0]) - 1 if len(failing) else len(margins)
    if m <= 0:
        return 2.0
    margin = margins[order[m - 1]]
    if m < len(margins) and margins[order[m]] == margin:  # a tie would let more queries stop
        margin = np.nextafter(margin, np.float32(np.inf))
    return float(margin)
