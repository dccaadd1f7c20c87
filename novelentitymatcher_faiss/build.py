"""Build path: catalog -> normalize -> encode (batches) -> FAISS index -> atomic artifact.

Vectors stream to a disk-backed ``.npy`` as they are encoded, so memory holds one batch of
texts and the index itself, never several copies of the matrix.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
import time
import warnings
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ._version import __version__
from .arrays import NpyRowWriter, advise_random, gather_rows, load_array
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
from .registry import DEFAULT_MODEL
from .search import EarlyStop, ExactTopK, iter_chunks
from .spill import check_spill, fill
from .strings import StringTable, StringTableWriter
from .timing import StageClock, stage_table
from .tuning import EF_SEARCH_GRID, TOP1_TARGET, nprobe_grid, tune_breadth, tune_early_stop

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
#: The stages a build times (manifest ``build_stages``, seconds each), in the order they run.
BUILD_STAGES = (
    "load model",
    "encode catalog",
    "encode tuning queries",
    "train",
    "add",
    "exact top 10 (tuning)",
    "tune nprobe",
    "tune early stop",
    "write",
    "calibrate",
    "other",
)
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
#: Typo'd catalog texts that tune nprobe and early stop. Early-stop margins are set at the
#: edge of a recall budget, so more queries set them more safely: on the 100k benchmark
#: artifact (nprobe 256), plans tuned on 1,000 kept 0.980 top-1 against exact search on
#: 1,000 new typo'd names and aliases, on 3,000 0.984 (the full nprobe: 0.991; a one-off
#: check). The 1M build takes 402 s instead of 220 s.
TUNING_QUERIES = 3000
#: Lists each vector is filed under, by kind (others: 1). "ivf-pq" files every vector under
#: its two nearest lists (:mod:`~novelentitymatcher_faiss.spill`), for twice the codes: the
#: tuned nprobe fell from 192 to 24 on 100k names (and from 384 to 192 on 1M).
DEFAULT_SPILL = {"ivf-pq": 2}


def build_index(
    entities: Iterable[Mapping[str, Any]] | str | Path,
    path: str | Path,
    *,
    model: str = DEFAULT_MODEL,
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
    extra_files: Mapping[str, Path] | None = None,
    trained: Any = None,
    memory_budget: str | int | None = None,
    spill: int | None = None,
    early_stop: bool = True,
    stage_graph: bool | None = None,
    calibrate: bool = True,
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
    with a flat coarse quantizer. ``extra_files`` ({name at the artifact's root: source
    file}): copied in and listed with the others (a trained head, :mod:`.scorers`).
    ``calibrate``: fit the confidence model of
    :mod:`~novelentitymatcher_faiss.calibration` on perturbed catalog texts and store it
    (not for ``trained`` shards, nor catalogs under ``MIN_ENTITIES`` entities).
    Returns the opened :class:`~novelentitymatcher_faiss.match_index.MatchIndex`.
    """

    clock = StageClock()
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
        with clock.stage("load model"):
            encoder = load_encoder(model, embedding_dim=embedding_dim, show_progress=show_progress)
    with atomic_directory(Path(path), overwrite=overwrite) as tmp:
        with clock.stage("encode catalog"):
            counts, columns = _encode_catalog(
                entities, tmp, encoder, lexical, settings, batch_size, show_progress
            )
        vectors = load_array(tmp / VECTORS_FILE, np.float32, ndim=2)
        advise_random(vectors)  # samples and re-ranks gather rows: no read-around
        plan = plan_index(index_type, vectors.shape, nlist, budget, rerank, spill)
        # the add pass also finds the exact top 10 of the tuning queries: one read of the
        # vectors, not two
        exact = None
        if plan.nlist or plan.graph:
            with clock.stage("encode tuning queries"):
                queries = _typo_queries(tmp, encoder, lexical, settings, seed)
                exact = ExactTopK(queries, min(10, len(vectors)))
        index = _train_and_add(
            plan.factory, vectors, seed, show_progress, trained, exact, plan.spill, clock
        )
        if plan.kind in INDEX_TYPES and plan.nlist >= HNSW_SEARCH_MIN_NLIST:
            use_graph_quantizer(index)  # before tuning: nprobe is tuned on the search path
        targets = (target_recall, target_top1)
        tuned = _tune(tmp, index, vectors, exact, plan, nprobe, targets, show_progress, clock,
                      early_stop, stage_graph)  # fmt: skip
        with clock.stage("write"):
            faiss_class = _write_index(tmp, index)
            del index, vectors
            if not (keep_vectors or plan.rerank > 1):
                (tmp / VECTORS_FILE).unlink()
            if bundle_model:
                shutil.copytree(encoder.path, tmp / MODEL_DIR)
            for name, source in (extra_files or {}).items():
                shutil.copyfile(source, tmp / name)
            files = file_records(tmp)
        manifest = {
            **_manifest_head(encoder, bool(bundle_model)),
            "normalizer": settings.to_dict(),
            "lexical": lexical.to_dict() if lexical else None,
            "index_dim": encoder.dim + (lexical.width if lexical else 0),
            "max_text_chars": MAX_TEXT_CHARS,
            "metric": "inner_product",
            "vectors_normalized": True,
            "index": _index_section(plan, faiss_class, tuned, tmp, budget),
            "counts": counts,
            "columns": columns,
            "build_seconds": round(clock.total(), 3),
            "build_stages": clock.to_dict(),
            **dict(extra_manifest or {}),
        }
        manifest["files"] = files
        if calibrate and trained is None:
            _calibrate(tmp, manifest, encoder, seed, show_progress, clock)
        write_manifest(tmp, manifest)
    if show_progress:
        tqdm.write(stage_table(manifest["build_stages"]), file=sys.stderr)
    return open_fresh(Path(path))


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


def plan_index(
    index_type: str,
    shape: tuple[int, int],
    nlist: int | None,
    budget: int | None,
    rerank: int | None,
    spill: int | None,
) -> IndexPlan:
    """The :class:`IndexPlan` for ``shape`` (n vectors, d dims); None picks the defaults."""
    kind, factory, n_list = choose_index(index_type, shape[0], shape[1], nlist, budget)
    rerank = (4 if kind in ("ivf-pq", "ivf-pq-small") else 0) if rerank is None else rerank
    spill = DEFAULT_SPILL.get(kind, 1) if spill is None else spill
    if spill > 1 and rerank < spill:
        raise ValueError(f"spill {spill} needs rerank >= {spill} (got {rerank})")
    return IndexPlan(kind, factory, n_list, rerank, spill)


@dataclass(frozen=True)
class Tuned:
    """A build's search settings: breadth (nprobe or efSearch; None for exact indexes),
    the measured breadth table, the early-stop plan (or None) and its measurements."""

    breadth: int | None
    table: list[dict[str, Any]]
    early: EarlyStop | None
    early_table: list[dict[str, Any]]


def _tune(  # noqa: ANN001 - a faiss.Index
    tmp: Path,
    index,
    vectors: np.ndarray,
    exact: ExactTopK | None,
    plan: IndexPlan,
    breadth: int | None,
    targets: tuple[float, float],
    show_progress: bool,
    clock: StageClock,
    early_stop: bool,
    stage_graph: bool | None,
) -> Tuned:
    """Tune the search breadth (unless given) and, for IVF indexes, early stop; a stage
    graph it chose is written to ``tmp``. ``targets``: (recall@10, top-1)."""
    if exact is None:
        return Tuned(breadth, [], None, [])
    with clock.stage("tune nprobe"):
        grid = list(EF_SEARCH_GRID) if plan.graph else nprobe_grid(plan.nlist)
        tuned = tune_breadth(index, vectors, exact, grid, breadth, targets, plan.rerank,
                             show_progress, plan.spill)  # fmt: skip
    if not (early_stop and plan.nlist and not plan.graph):
        return Tuned(tuned.breadth, tuned.table, None, [])
    with clock.stage("tune early stop"):
        stages = _stage_graph(index, stage_graph)
        early, early_table = tune_early_stop(
            index, vectors, exact, tuned.breadth, nprobe_grid(plan.nlist), targets[1],
            plan.rerank, plan.spill, stages, tuned.top1,
        )  # fmt: skip
        if early is not None and stages is not None:
            import faiss

            early = replace(early, graph_ef_search=STAGE_GRAPH_EF)
            faiss.write_index(stages, str(tmp / STAGE_GRAPH_FILE))
    return Tuned(tuned.breadth, tuned.table, early, early_table)


def _write_index(tmp: Path, index) -> str:  # noqa: ANN001 - a faiss.Index
    """Write ``index`` to ``tmp``; returns the FAISS class name it reads back as."""
    import faiss

    faiss.write_index(index, str(tmp / INDEX_FILE))
    return type(open_faiss_index(tmp / INDEX_FILE)).__name__


def _manifest_head(encoder: Encoder, bundled: bool) -> dict[str, Any]:
    """The manifest's format, versions, build time and model sections."""
    import faiss

    return {
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
            "bundled": bundled,
        },
    }


def _index_section(
    plan: IndexPlan, faiss_class: str, tuned: Tuned, tmp: Path, budget: int | None
) -> dict[str, Any]:
    """The manifest's ``index`` section."""
    return {
        "type": plan.kind,
        "factory": plan.factory,
        "faiss_class": faiss_class,
        "nlist": plan.nlist,
        "nprobe": tuned.breadth if plan.nlist else None,
        "nprobe_tuning": [] if plan.graph else tuned.table,
        "ef_search": tuned.breadth if plan.graph else None,
        "ef_search_tuning": tuned.table if plan.graph else [],
        "rerank": plan.rerank,
        "spill": plan.spill,
        "early_stop": tuned.early.to_dict() if tuned.early else None,
        "early_stop_tuning": tuned.early_table,
        "vectors_stored": (tmp / VECTORS_FILE).exists(),
        "memory_budget": budget,
    }


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


def _calibrate(
    tmp: Path,
    manifest: dict[str, Any],
    encoder: Encoder,
    seed: int,
    show_progress: bool,
    clock: StageClock,
) -> None:
    """Fit the confidence model on the artifact written in ``tmp`` (its files; ``manifest``
    is written after) and add it, and the stage's time, to ``manifest``."""
    from .calibration import calibrate
    from .match_index import MatchIndex

    with clock.stage("calibrate"):
        fitted = calibrate(MatchIndex(tmp, manifest, encoder=encoder), seed,
                           show_progress=show_progress)  # fmt: skip
    if fitted is None:
        return
    manifest.update(calibration=fitted.to_dict(), build_seconds=round(clock.total(), 3),
                    build_stages=clock.to_dict())  # fmt: skip


def open_fresh(path: Path):  # noqa: ANN202 - MatchIndex
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
            self.vectors.append(featurize(self._batch, self.encoder, self.lexical, self.batch_size))
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


def _train_and_add(  # noqa: ANN202 - a faiss.Index
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


def is_graph_factory(factory: str) -> bool:
    """Whether a FAISS factory string builds an HNSW graph index (searched with efSearch)."""
    return factory.startswith("HNSW")
