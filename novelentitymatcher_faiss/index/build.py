"""Build path: catalog -> normalize -> encode (batches) -> FAISS index -> atomic artifact.

:func:`build` runs the stages over a :class:`BuildConfig`: load the model, encode the
catalog (:mod:`.catalog_writer`), choose, train and fill the index (:mod:`.indexing`),
tune its search settings (:mod:`.tuning`), write the files, fit the confidence model
(:mod:`.calibration`) and write the manifest (:mod:`.manifest`). :func:`build_index` is the
keyword API over it. Vectors stream to a disk-backed ``.npy`` as they are encoded, so
memory holds one batch of texts and the index itself, never several copies of the matrix.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..artifact.arrays import advise_random, load_array
from ..artifact.files import MODEL_DIR, VECTORS_FILE, atomic_directory, file_records
from ..artifact.manifest import Counts, IndexInfo, Manifest, ModelInfo, new_manifest, write_manifest
from ..errors import ArtifactError
from ..models.encoders import Encoder, load_encoder
from ..models.registry import DEFAULT_MODEL
from ..text.lexical import LexicalSettings
from ..text.normalize import NormalizerSettings
from .budget import parse_bytes
from .catalog import MAX_TEXT_CHARS
from .catalog_writer import encode_catalog
from .indexing import (
    HNSW_SEARCH_MIN_NLIST,
    INDEX_TYPES,
    IndexConfig,
    IndexPlan,
    plan_index,
    train_and_add,
    use_graph_quantizer,
    write_index,
)
from .search import ExactTopK
from .timing import StageClock, stage_table
from .tuning import TOP1_TARGET, Tuned, TuningConfig, tune_index, typo_queries

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


@dataclass(frozen=True)
class BuildConfig:
    """Everything a build needs besides the catalog and the output folder.

    ``model`` (a registry alias, model id or folder) truncated to ``embedding_dim``;
    ``normalizer`` and ``lexical`` (None: dense only) shape every text; ``batch_size``
    texts are encoded at a time; ``bundle_model`` copies the model folder into the
    artifact; ``calibrate`` fits the confidence model (:mod:`.calibration`; not for
    catalogs under its ``MIN_ENTITIES``); ``extra_manifest`` ({manifest field: value}) and
    ``extra_files`` ({name at the artifact's root: source file}) are added as they are.
    """

    model: str = DEFAULT_MODEL
    embedding_dim: int | None = None
    normalizer: NormalizerSettings = field(default_factory=NormalizerSettings)
    lexical: LexicalSettings | None = field(default_factory=LexicalSettings)
    index: IndexConfig = field(default_factory=IndexConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    batch_size: int = 1024
    show_progress: bool = True
    overwrite: bool = False
    bundle_model: bool = False
    calibrate: bool = True
    extra_manifest: Mapping[str, Any] = field(default_factory=dict)
    extra_files: Mapping[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


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

    The keywords fill a :class:`BuildConfig` (model, text settings, what is stored), its
    :class:`~.indexing.IndexConfig` (``index_type``, ``nlist``, ``rerank``, ``spill``,
    ``memory_budget``, ``keep_vectors``) and :class:`~.tuning.TuningConfig` (``nprobe``,
    ``target_recall``, ``target_top1``, ``early_stop``, ``stage_graph``, ``seed``); their
    docs say what each does. ``normalize``: True, False or :class:`NormalizerSettings`;
    ``lexical``: True (default settings), False/None or :class:`LexicalSettings`;
    ``encoder``: an already loaded encoder; ``trained``: an empty, trained FAISS index of the
    same factory to fill instead of training one (shards of a distributed build share their
    coarse quantizer that way; such shards get no confidence model). Returns the opened
    :class:`~.match_index.MatchIndex`.
    """
    budget = None if memory_budget is None else parse_bytes(memory_budget)
    config = BuildConfig(
        model=model, embedding_dim=embedding_dim, normalizer=normalizer_settings(normalize),
        lexical=resolve_lexical(lexical),
        index=IndexConfig(index_type, nlist, rerank, spill, budget, keep_vectors),
        tuning=TuningConfig(nprobe, target_recall, target_top1, early_stop, stage_graph, seed),
        batch_size=batch_size, show_progress=show_progress, overwrite=overwrite,
        bundle_model=bool(bundle_model), calibrate=calibrate,
        extra_manifest=dict(extra_manifest or {}), extra_files=dict(extra_files or {}),
    )  # fmt: skip
    return build(entities, path, config, encoder=encoder, trained=trained)


def build(
    entities: Iterable[Mapping[str, Any]] | str | Path,
    path: str | Path,
    config: BuildConfig,
    *,
    encoder: Encoder | None = None,
    trained: Any = None,
):  # noqa: ANN201 - returns MatchIndex
    """Run the build stages of ``config`` (see :func:`build_index`) and open the result."""
    clock = StageClock()
    progress = config.show_progress
    if encoder is None:
        with clock.stage("load model"):
            encoder = load_encoder(config.model, embedding_dim=config.embedding_dim,
                                   show_progress=progress)  # fmt: skip
    with atomic_directory(Path(path), overwrite=config.overwrite) as tmp:
        with clock.stage("encode catalog"):
            counts, columns, lexical = encode_catalog(
                entities, tmp, encoder, config.lexical, config.normalizer, config.batch_size,
                progress,
            )
        config = replace(config, lexical=lexical)  # word weights, when learned, are set now
        vectors = load_array(tmp / VECTORS_FILE, np.float32, ndim=2)
        advise_random(vectors)  # samples and re-ranks gather rows: no read-around
        plan = plan_index(config.index, vectors.shape)
        exact = _exact_top10(tmp, vectors, plan, encoder, config, clock)
        index = train_and_add(plan.factory, vectors, config.tuning.seed, progress, trained,
                              exact, plan.spill, clock)  # fmt: skip
        if plan.kind in INDEX_TYPES and plan.nlist >= HNSW_SEARCH_MIN_NLIST:
            use_graph_quantizer(index)  # before tuning: nprobe is tuned on the search path
        tuned = tune_index(tmp, index, vectors, exact, plan, config.tuning, progress, clock)
        with clock.stage("write"):
            faiss_class = write_index(tmp, index)
            del index, vectors
            files = _write_files(tmp, encoder, plan, config)
        info = _index_info(plan, faiss_class, tuned, tmp, config.index.memory_budget)
        manifest = _manifest(encoder, config, info, Counts(**counts), columns, files, clock)
        if config.calibrate and trained is None:
            manifest = _calibrate(tmp, manifest, encoder, config, clock)
        write_manifest(tmp, manifest)
    if progress:
        tqdm.write(stage_table(manifest.build_stages or {}), file=sys.stderr)
    return open_fresh(Path(path))


def _exact_top10(
    tmp: Path,
    vectors: np.ndarray,
    plan: IndexPlan,
    encoder: Encoder,
    config: BuildConfig,
    clock: StageClock,
) -> ExactTopK | None:
    """The tuning queries, whose exact top 10 the add pass fills (one read of the vectors,
    not two); None for exact indexes (nothing to tune)."""
    if not (plan.nlist or plan.graph):
        return None
    with clock.stage("encode tuning queries"):
        queries = typo_queries(tmp, encoder, config.lexical, config.normalizer,
                               config.tuning.seed)  # fmt: skip
        return ExactTopK(queries, min(10, len(vectors)))


def _write_files(
    tmp: Path, encoder: Encoder, plan: IndexPlan, config: BuildConfig
) -> dict[str, dict[str, Any]]:
    """Drop the vectors unless kept (or needed to re-rank), copy the model and extra
    files; returns the manifest's ``files`` records."""
    if not (config.index.keep_vectors or plan.rerank > 1):
        (tmp / VECTORS_FILE).unlink()
    if config.bundle_model:
        shutil.copytree(encoder.path, tmp / MODEL_DIR)
    for name, source in config.extra_files.items():
        shutil.copyfile(source, tmp / name)
    return file_records(tmp)


def _index_info(
    plan: IndexPlan, faiss_class: str, tuned: Tuned, tmp: Path, budget: int | None
) -> IndexInfo:
    """The manifest's ``index`` section."""
    return IndexInfo(
        type=plan.kind, factory=plan.factory, faiss_class=faiss_class, nlist=plan.nlist,
        nprobe=tuned.breadth if plan.nlist else None,
        nprobe_tuning=[] if plan.graph else tuned.table,
        ef_search=tuned.breadth if plan.graph else None,
        ef_search_tuning=tuned.table if plan.graph else [],
        rerank=plan.rerank, spill=plan.spill, early_stop=tuned.early,
        early_stop_tuning=tuned.early_table, vectors_stored=(tmp / VECTORS_FILE).exists(),
        memory_budget=budget,
    )  # fmt: skip


def _manifest(
    encoder: Encoder,
    config: BuildConfig,
    info: IndexInfo,
    counts: Counts,
    columns: dict[str, Any] | None,
    files: dict[str, dict[str, Any]],
    clock: StageClock,
) -> Manifest:
    """The manifest of a build, its ``extra_manifest`` applied."""
    model = ModelInfo(
        name=encoder.model_name, alias=encoder.spec.alias, id=encoder.spec.model_id,
        backend=encoder.backend, fingerprint=encoder.fingerprint,
        native_dim=encoder.native_dim, dim=encoder.dim, bundled=config.bundle_model,
    )  # fmt: skip
    lexical = config.lexical
    manifest = new_manifest(
        model=model, normalizer=config.normalizer, lexical=lexical,
        index_dim=encoder.dim + (lexical.width if lexical else 0),
        max_text_chars=MAX_TEXT_CHARS, index=info, counts=counts, columns=columns,
        build_seconds=round(clock.total(), 3), build_stages=clock.to_dict(), files=files,
    )  # fmt: skip
    return manifest.replace(**config.extra_manifest)


def _calibrate(
    tmp: Path, manifest: Manifest, encoder: Encoder, config: BuildConfig, clock: StageClock
) -> Manifest:
    """Fit the confidence model on the artifact written in ``tmp`` (its files; the manifest
    is written after); ``manifest`` with it, and the stage's time, added."""
    from ..query.calibration import calibrate
    from ..query.match_index import MatchIndex

    with clock.stage("calibrate"):
        fitted = calibrate(MatchIndex(tmp, manifest, encoder=encoder), config.tuning.seed,
                           show_progress=config.show_progress)  # fmt: skip
    if fitted is None:
        return manifest
    return manifest.replace(calibration=fitted, build_seconds=round(clock.total(), 3),
                            build_stages=clock.to_dict())  # fmt: skip


def open_fresh(path: Path):  # noqa: ANN201 - MatchIndex
    """Open the artifact just written; retry briefly if a concurrent build swaps it meanwhile."""
    from ..query.match_index import load_index

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


def normalizer_settings(normalize: bool | NormalizerSettings) -> NormalizerSettings:
    """``True`` -> default settings, ``False`` -> texts unchanged, or the settings given."""
    if isinstance(normalize, NormalizerSettings):
        return normalize
    return NormalizerSettings(bool(normalize))

