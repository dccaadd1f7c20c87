"""Retrain path: labelled examples -> SetFit -> [model2vec distill] -> catalog re-encoded.

``train_index`` reads top to bottom: check the examples against the catalog, choose the
mode, load the body: ``head-only`` keeps the model asked for (static ones too: the body
stays frozen), ``full`` needs a trainable sentence-transformer (static models fall back to
``mpnet`` with a warning) and fine-tunes it with SetFit's contrastive phase; optionally
distill the result into a model2vec static model, fit a logistic-regression head on the
final model's vectors, and write a new artifact with :func:`build.build_index` that bundles
the model folder (body and head), so the artifact is self-contained. Everything is written
once, at the end, through the atomic artifact writer: an interrupted training leaves the
previous artifact as it was. Checkpoints live in a temp dir that is always removed.

Matching still searches the FAISS index, now in the fine-tuned space. By default the head
(:class:`ClassifierHead`) then re-ranks the index's best candidates (:class:`HybridScorer`);
it can also score alone, over the labelled entities only (:class:`HeadScorer`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactExistsError, TrainingError
from ..index.build import BuildConfig, build, normalizer_settings, resolve_lexical
from ..index.catalog import MAX_TEXT_CHARS, read_catalog
from ..index.indexing import IndexConfig
from ..index.tuning import TuningConfig
from ..models.encoders import Encoder, fingerprint_dir, load_encoder
from ..models.registry import get_spec
from ..models.sources import SOURCE_DIR, resolve_model
from ..query.scorers import HEAD_FILE, ClassifierHead
from ..text.normalize import NormalizerSettings, normalize_text

MODES = ("zero-shot", "head-only", "full")
#: Where no mode is given, a label needs this many examples for ``full`` training.
MIN_EXAMPLES_FOR_FULL = 3
#: Trainable model used when the requested one is static (potion, MRL static embeddings).
TRAINING_MODEL = "mpnet"
SAMPLING_STRATEGIES = ("undersampling", "oversampling", "unique")
DEFAULT_DISTILL_DIMS = 256
#: Catalog texts that join the examples in full training (see :func:`catalog_anchors`).
ANCHORS = 2000
#: At most this many catalog words join the distilled vocabulary (most frequent first).
DISTILL_VOCABULARY = 20_000


# ---------------------------------------------------------------------------- examples


def read_training_data(
    source: Iterable[Mapping[str, Any]] | str | os.PathLike[str],
) -> list[tuple[str, Mapping[str, Any]]]:
    """``(where, row)`` pairs from a list of ``{"text", "label"}`` dicts or a .csv/.jsonl file.

    ``where`` names the row in error messages ("training example 3", "data.csv, line 4").
    """
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise TrainingError(f"{path}: training data file not found")
        suffix = path.suffix.lower()
        try:
            with open(path, encoding="utf-8-sig", newline="") as handle:
                if suffix == ".csv":
                    reader = csv.DictReader(handle)
                    missing = {"text", "label"} - set(reader.fieldnames or [])
                    if missing:
                        raise TrainingError(
                            f"{path}: missing column(s) {sorted(missing)}; a training CSV needs "
                            "'text' and 'label' (an entity id of the catalog)"
                        )
                    return [(f"{path}, line {reader.line_num}", row) for row in reader]
                if suffix == ".jsonl":
                    return [
                        (f"{path}, line {number}", _loads(line, f"{path}, line {number}"))
                        for number, line in enumerate(handle, start=1)
                        if line.strip()
                    ]
        except UnicodeDecodeError as exc:
            raise TrainingError(f"{path}: not valid UTF-8 ({exc.reason})") from None
        raise TrainingError(f"{path}: unsupported training data format; use .csv or .jsonl")
    if isinstance(source, Mapping | bytes):
        raise TrainingError("training_data must be a list of {'text', 'label'} dicts or a path")
    return [(f"training example {number}", row) for number, row in enumerate(source, start=1)]


def _loads(line: str, where: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise TrainingError(f"{where}: invalid JSON ({exc.msg})") from None


def check_training_data(
    source: Iterable[Mapping[str, Any]] | str | os.PathLike[str],
    entity_ids: Iterable[str],
    normalizer: NormalizerSettings | None = None,
) -> list[dict[str, str]]:
    """Validated examples ``[{"text", "label"}]``, texts normalized as queries will be.

    Raises :class:`TrainingError` naming the row for a text that is missing, not a string or
    empty after normalization, and naming every label that is not an id in ``entity_ids``.
    """
    settings = normalizer or NormalizerSettings()
    known = set(entity_ids)
    examples: list[dict[str, str]] = []
    unknown: dict[str, str] = {}
    for where, row in read_training_data(source):
        if not isinstance(row, Mapping):
            raise TrainingError(f"{where}: expected a mapping with 'text' and 'label'")
        text, label = row.get("text"), row.get("label")
        if not isinstance(text, str):
            raise TrainingError(f"{where}: 'text' must be a string, got {text!r:.40}")
        if not isinstance(label, str) or not label.strip():
            raise TrainingError(f"{where}: 'label' must be a non-empty entity id, got {label!r}")
        norm = normalize_text(text[:MAX_TEXT_CHARS], settings)
        if not norm.strip():
            raise TrainingError(f"{where}: text {text!r} is empty after normalization")
        if label not in known:
            unknown.setdefault(label, where)
        examples.append({"text": norm, "label": label})
    if unknown:
        listed = ", ".join(f"{label!r} ({where})" for label, where in list(unknown.items())[:10])
        raise TrainingError(
            f"{len(unknown)} training label(s) are not entity ids of the catalog: {listed}"
            f"{' ...' if len(unknown) > 10 else ''}. Labels must be the catalog's 'id' values."
        )
    return examples


def choose_mode(examples: Sequence[Mapping[str, str]] | None) -> str:
    """``zero-shot`` without examples; ``head-only`` when every label has fewer than
    :data:`MIN_EXAMPLES_FOR_FULL` examples; else ``full``."""
    if not examples:
        return "zero-shot"
    counts = Counter(example["label"] for example in examples)
    return "full" if max(counts.values()) >= MIN_EXAMPLES_FOR_FULL else "head-only"


def training_data_sha256(examples: Sequence[Mapping[str, str]]) -> str:
    """Hex sha256 of the examples as canonical JSON, in order.

    Canonical: a list of ``{"label", "text"}`` objects, keys sorted, no spaces
    (``separators=(",", ":")``), non-ASCII kept (``ensure_ascii=False``), UTF-8.
    """
    rows = [{"label": example["label"], "text": example["text"]} for example in examples]
    blob = json.dumps(rows, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def holdout_split(
    examples: Sequence[Mapping[str, str]],
    fraction: float = 1 / 3,
    exclude: Iterable[str] = (),
    fold: int = 0,
) -> tuple[list[Mapping[str, str]], list[Mapping[str, str]]]:
    """Deterministic (train, held-out) split of examples for evaluation.

    Per label, examples are ordered by the sha256 of their text; of those whose text is not
    in ``exclude`` (for instance the catalog's own normalized names, which any model
    matches), ``k = floor(n * fraction)`` are held out: the first ``k`` for ``fold`` 0, the
    next ``k`` for fold 1, and so on (cross-validation). Input order is kept.
    """
    skip = set(exclude)
    by_label: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        by_label.setdefault(example["label"], []).append(i)
    held: set[int] = set()
    for rows in by_label.values():
        ranked = sorted(rows, key=lambda i: hashlib.sha256(examples[i]["text"].encode()).digest())
        candidates = [i for i in ranked if examples[i]["text"] not in skip]
        size = int(len(rows) * fraction)
        held.update(candidates[fold * size : (fold + 1) * size])
    train = [example for i, example in enumerate(examples) if i not in held]
    return train, [example for i, example in enumerate(examples) if i in held]


def training_model(model: str) -> str:
    """``model`` if it is a trainable sentence-transformer, else :data:`TRAINING_MODEL`.

    A static model (model2vec, StaticEmbedding) has no body to fine-tune: the fallback is
    announced with a ``UserWarning``.
    """
    from ..models.encoders import detect_backend

    spec = get_spec(model)
    if spec is not None:
        trainable, backend = spec.trainable, spec.backend
    else:
        backend = detect_backend(resolve_model(model, show_progress=False).path)
        trainable = backend == "sentence-transformers"
    if trainable:
        return model
    warnings.warn(
        f"model {model!r} is a static {backend} model and cannot be fine-tuned; training "
        f"{TRAINING_MODEL!r} instead. Pass distill=True to get static query speed back.",
        UserWarning,
        stacklevel=3,
    )
    return TRAINING_MODEL


# ---------------------------------------------------------------------------- classifier head


def fit_head(vectors: np.ndarray, labels: Sequence[str], c: float = 100.0) -> ClassifierHead:
    """Fit SetFit's classifier phase: logistic regression on float32 vectors (n, dim).

    ``c`` is the inverse L2 strength. SetFit's default of 1 is far too strong for unit
    vectors (probabilities stay near uniform); 100 gives confident, accurate heads here.
    """
    from sklearn.linear_model import LogisticRegression

    classes = sorted(set(labels))
    if len(classes) < 2:
        raise TrainingError("training needs examples of at least 2 different entities")
    with warnings.catch_warnings():  # few examples per label is the point, not a mistake
        warnings.filterwarnings("ignore", message="The number of unique classes")
        model = LogisticRegression(C=c, max_iter=1000).fit(vectors, list(labels))
    weight = np.ascontiguousarray(model.coef_, dtype=np.float32)
    bias = np.ascontiguousarray(model.intercept_, dtype=np.float32)
    if len(model.classes_) == 2:  # sigmoid(z) == softmax([-z/2, z/2])[1]
        weight = np.vstack([-weight / 2, weight / 2])
        bias = np.array([-bias[0] / 2, bias[0] / 2], dtype=np.float32)
    return ClassifierHead(tuple(str(label) for label in model.classes_), weight, bias)


# ---------------------------------------------------------------------------- training


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed python, numpy and torch, and run torch's deterministic kernels, then restore."""
    import torch
    from transformers import set_seed

    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    set_seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def fine_tune_body(
    body: Any,
    examples: Sequence[Mapping[str, str]],
    workdir: Path,
    config: TrainConfig,
    show_progress: bool = True,
) -> int:
    """SetFit's contrastive phase on a ``SentenceTransformer`` ``body``, in place, with
    ``config``'s epochs, batch size, step cap, learning rate, pair sampling, seed and
    callbacks (transformers ``TrainerCallback``s).

    Pairs of examples with the same label are pulled together, other pairs pushed apart
    (CosineSimilarityLoss). Checkpoint output goes under ``workdir``, never the working
    directory. Returns the steps run.
    """
    from setfit import SetFitModel, Trainer, TrainingArguments
    from transformers import ProgressCallback

    args = TrainingArguments(
        output_dir=str(workdir / "checkpoints"),
        batch_size=config.batch_size,
        num_epochs=config.num_epochs,
        max_steps=config.max_steps or -1,
        body_learning_rate=config.learning_rate,
        sampling_strategy=config.sampling_strategy,
        seed=config.seed,
        report_to="none",
        save_strategy="no",
        logging_strategy="steps" if show_progress else "no",
        show_progress_bar=show_progress,
    )
    trainer = Trainer(model=SetFitModel(model_body=body), args=args,
                      callbacks=list(config.callbacks))  # fmt: skip
    trainer.st_trainer.args.dataloader_pin_memory = False  # CPU: pinning only warns
    if not show_progress:
        trainer.pop_callback(ProgressCallback)
    ids = {label: i for i, label in enumerate(sorted(labels_of(examples)))}
    trainer.train_embeddings(
        [example["text"] for example in examples], [ids[example["label"]] for example in examples]
    )
    return int(trainer.st_trainer.state.global_step)


def catalog_anchors(
    entities: Iterable[Mapping[str, Any]] | str | os.PathLike[str],
    labels: Iterable[str],
    settings: NormalizerSettings,
    limit: int = ANCHORS,
    seed: int = 0,
) -> list[dict[str, str]]:
    """The catalog's own texts as examples of their entity, for full training.

    Every name and alias of the labelled entities comes first, then a seeded uniform sample
    (reservoir) of the other entities' texts, ``limit`` in all. They tie the variants to the
    texts the index holds and give negatives from the whole catalog, so fine-tuning does not
    distort the space of the entities without examples (without anchors, SetFit's pair
    training lowered mpnet's held-out top-1; see docs/training.md).
    """
    import random

    wanted = set(labels)
    first: list[dict[str, str]] = []
    others: list[dict[str, str]] = []
    rng = random.Random(seed)
    seen = 0
    for entity in read_catalog(entities):
        texts = {
            normalize_text(t[:MAX_TEXT_CHARS], settings)
            for t in (entity["name"], *entity["aliases"])
        }
        for text in sorted(t for t in texts if t):
            row = {"text": text, "label": entity["id"]}
            if entity["id"] in wanted:
                first.append(row)
                continue
            seen += 1
            if len(others) < limit:
                others.append(row)
            elif (j := rng.randrange(seen)) < limit:
                others[j] = row
    room = max(0, limit - len(first))
    return first[:limit] + (rng.sample(others, room) if len(others) > room else others)


def distill_vocabulary(
    entities: Iterable[Mapping[str, Any]] | str | os.PathLike[str],
    examples: Sequence[Mapping[str, str]],
    settings: NormalizerSettings,
    limit: int = DISTILL_VOCABULARY,
) -> list[str]:
    """Words for the distilled model's vocabulary: every word of the training examples, then
    the catalog's most frequent words, up to ``limit`` in all (normalized as queries are).

    model2vec embeds each such word with one pass through the fine-tuned body, so the static
    model holds the fine-tuned vector of whole words instead of an average of sub-words.
    """
    words = {word for example in examples for word in example["text"].split()}
    catalog: Counter[str] = Counter()
    for entity in read_catalog(entities):
        for text in (entity["name"], *entity["aliases"]):
            catalog.update(normalize_text(text[:MAX_TEXT_CHARS], settings).split())
    chosen = sorted(words)[:limit]
    seen = set(chosen)
    chosen += [w for w, _ in catalog.most_common() if w not in seen][: max(0, limit - len(chosen))]
    return chosen


def distill_static(folder: Path, out: Path, options: Mapping[str, Any], base_id: str) -> Path:
    """Distill the sentence-transformer in ``folder`` into a model2vec model saved at ``out``.

    ``options`` go to ``model2vec.distill.distill`` (``pca_dims`` defaults to 256).
    """
    from model2vec.distill import distill

    static = distill(model_name=str(folder), **{"pca_dims": DEFAULT_DISTILL_DIMS, **options})
    static.base_model_name = base_id  # keep temp paths out of the saved config
    static.config["tokenizer_name"] = base_id
    static.save_pretrained(out)
    return out


def _copy_source(base: Path, folder: Path) -> None:
    """Carry the base model's provenance and licence files (``_source/``) along."""
    if (base / SOURCE_DIR).is_dir():
        shutil.copytree(base / SOURCE_DIR, folder / SOURCE_DIR, dirs_exist_ok=True)


@dataclass(frozen=True)
class TrainConfig:
    """How :func:`train` trains.

    ``mode``: "zero-shot" (no training), "head-only" (body frozen, head fitted), "full"
    (SetFit body fine-tuning, then the head); None picks one (:func:`choose_mode`).
    ``model``: the body (``full`` fine-tunes ``TRAINING_MODEL`` instead of a static one).
    ``num_epochs``, ``batch_size``, ``max_steps``, ``learning_rate`` and
    ``sampling_strategy`` drive SetFit's pair training, on the examples plus up to
    ``anchors`` catalog texts (:func:`catalog_anchors`); ``seed`` seeds it all.
    ``head_c``: the head's inverse L2 strength. ``distill=True`` (or a dict of
    ``model2vec.distill.distill`` options) turns the result into a static model2vec model.
    ``example_aliases``: every training text also enters the index as an alias of its
    entity (:func:`with_examples`), so what the examples say is found by the search itself.
    ``bundle_model``: copy the model into the artifact. None bundles a body that training
    changed (``full``, or ``distill``); a ``head-only`` artifact then keeps only its head
    (``HEAD_FILE``, kilobytes) and names the untouched registry model by name and
    fingerprint, as a zero-shot build does. ``callbacks``: SetFit trainer callbacks.
    """

    mode: str | None = None
    model: str = TRAINING_MODEL
    num_epochs: int = 1
    batch_size: int = 16
    max_steps: int | None = None
    learning_rate: float = 2e-5
    sampling_strategy: str = "undersampling"
    seed: int = 0
    head_c: float = 100.0
    anchors: int = ANCHORS
    distill: bool | Mapping[str, Any] = False
    example_aliases: bool = True
    bundle_model: bool | None = None
    callbacks: Sequence[Any] = ()

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            raise TrainingError(f"mode {self.mode!r} is not available; choose one of {MODES}")
        if self.sampling_strategy not in SAMPLING_STRATEGIES:
            raise TrainingError(f"sampling_strategy must be one of {SAMPLING_STRATEGIES}")
        for name in ("num_epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TrainingError(f"{name} must be a positive int, got {value!r}")


def train_index(
    entities: Iterable[Mapping[str, Any]] | str | Path,
    training_data: Iterable[Mapping[str, Any]] | str | Path | None,
    path: str | Path,
    *,
    model: str = TRAINING_MODEL,
    mode: str | None = None,
    num_epochs: int = 1,
    batch_size: int = 16,
    max_steps: int | None = None,
    learning_rate: float = 2e-5,
    sampling_strategy: str = "undersampling",
    seed: int = 0,
    head_c: float = 100.0,
    anchors: int = ANCHORS,
    distill: bool | Mapping[str, Any] = False,
    embedding_dim: int | None = None,
    normalize: bool | NormalizerSettings = True,
    lexical: Any = True,
    index_type: str = "auto",
    show_progress: bool = True,
    overwrite: bool = False,
    callbacks: Sequence[Any] = (),
    example_aliases: bool = True,
    bundle_model: bool | None = None,
    build_config: BuildConfig | None = None,
):  # noqa: ANN201 - returns MatchIndex, like build_index
    """Train on ``training_data`` and write a self-contained artifact to ``path``.

    ``training_data``: ``[{"text", "label": entity_id}]`` or a .csv/.jsonl file of them.
    The training keywords fill a :class:`TrainConfig` (its docs say what each does); the
    others (``embedding_dim``, ``normalize``, ``lexical``, ``index_type``,
    ``show_progress``, ``overwrite``) a :class:`~.build.BuildConfig` as
    :func:`~.build.build_index` does, unless ``build_config`` gives one. Returns the opened
    index.
    """
    config = TrainConfig(
        mode, model, num_epochs, batch_size, max_steps, learning_rate, sampling_strategy,
        seed, head_c, anchors, distill, example_aliases, bundle_model, tuple(callbacks),
    )  # fmt: skip
    build_config = build_config or BuildConfig(
        embedding_dim=embedding_dim, normalizer=normalizer_settings(normalize),
        lexical=resolve_lexical(lexical), index=IndexConfig(index_type),
        tuning=TuningConfig(seed=seed), show_progress=show_progress, overwrite=overwrite,
    )  # fmt: skip
    return train(entities, training_data, path, config, build_config)


def train(
    entities: Iterable[Mapping[str, Any]] | str | Path,
    training_data: Iterable[Mapping[str, Any]] | str | Path | None,
    path: str | Path,
    config: TrainConfig,
    build_config: BuildConfig,
):  # noqa: ANN201 - returns MatchIndex
    """Check the examples, train as ``config`` says (:func:`train_index`) and build the
    artifact as ``build_config`` says, with the trained model; opened."""
    started = time.perf_counter()
    settings = build_config.normalizer
    if Path(path).exists() and not build_config.overwrite:  # fail before minutes, not after
        raise ArtifactExistsError(f"{path}: already exists; pass overwrite=True to replace it")
    if not isinstance(entities, str | os.PathLike | Sequence):
        entities = list(entities)  # read twice: ids now, texts when building
    examples = (
        check_training_data(training_data, (e["id"] for e in read_catalog(entities)), settings)
        if training_data is not None
        else []
    )
    mode = config.mode or choose_mode(examples)
    _check_mode(mode, examples, config)
    if mode == "zero-shot":
        return build(entities, path, replace(build_config, model=config.model))
    base_name = config.model if mode == "head-only" else training_model(config.model)
    base = load_encoder(base_name, show_progress=build_config.show_progress)
    if config.distill and base.backend != "sentence-transformers":
        raise TrainingError(f"distill turns a sentence-transformer into a static model; "
                            f"{config.model!r} is a static {base.backend} model")  # fmt: skip
    record = _training_record(mode, config, base, examples)
    bundle = config.bundle_model
    if bundle is None:  # a body that training changed exists only in the artifact
        bundle = mode == "full" or bool(config.distill)
    with tempfile.TemporaryDirectory(prefix="nem-faiss-train-") as tmp:
        work = Path(tmp)
        folder, suffix = _trained_body(base, mode, entities, examples, work, config, record,
                                       bundle, build_config)  # fmt: skip
        del base  # the body is on disk: free it before the head's model loads
        source = str(folder) if bundle else base_name  # unbundled: the registry's model
        encoder, head_file = _fit_head(source, suffix, examples, config, record, bundle, work,
                                       build_config.embedding_dim)  # fmt: skip
        catalog: Any = entities
        if config.example_aliases:
            catalog, record["example_aliases"] = with_examples(entities, examples, settings)
        record.update(default_scorer="hybrid", versions=_versions(),
                      train_seconds=round(time.perf_counter() - started, 3))  # fmt: skip
        final = replace(build_config, bundle_model=bundle, extra_manifest={"training": record},
                        extra_files={} if bundle else {HEAD_FILE: head_file})  # fmt: skip
        return build(catalog, path, final, encoder=encoder)


def _check_mode(mode: str, examples: list[dict[str, str]], config: TrainConfig) -> None:
    """TrainingError unless ``mode`` can run on ``examples`` with ``config``."""
    if config.bundle_model is False and (mode == "full" or config.distill):
        raise TrainingError("a fine-tuned or distilled model exists only in the artifact: "
                            "bundle_model=False applies to mode 'head-only' alone")  # fmt: skip
    if mode == "zero-shot":
        if examples:
            raise TrainingError("mode 'zero-shot' takes no training data; use head-only or full")
        return
    if not examples:
        raise TrainingError(f"mode {mode!r} needs training data: [{{'text', 'label'}}, ...]")
    if len(labels_of(examples)) < 2:
        raise TrainingError(
            "training needs examples of at least 2 different entities; without training "
            "data, fit() builds a zero-shot index"
        )


def _training_record(
    mode: str, config: TrainConfig, base: Encoder, examples: list[dict[str, str]]
) -> dict[str, Any]:
    """The manifest's ``training`` section as known before training."""
    return {
        "mode": mode,
        "requested_model": config.model,
        "base_model": {"name": base.model_name, "id": base.spec.model_id,
                       "fingerprint": base.fingerprint},  # fmt: skip
        "training_data_sha256": training_data_sha256(examples),
        "examples": len(examples),
        "labels": len(labels_of(examples)),
        "num_epochs": config.num_epochs if mode == "full" else None,
        "seed": config.seed,
    }


def _trained_body(
    base: Encoder,
    mode: str,
    entities: Any,
    examples: list[dict[str, str]],
    work: Path,
    config: TrainConfig,
    record: dict[str, Any],
    bundle: bool,
    build_config: BuildConfig,
) -> tuple[Path, str]:
    """The model folder the head is fitted on, in ``work``: ``base`` fine-tuned (``full``)
    or copied (bundled ``head-only``), then distilled when asked; and the suffix its name
    gets. ``record`` gets what was done. An unbundled ``head-only`` body stays the
    registry's (the folder stays empty)."""
    folder, settings = work / "model", build_config.normalizer
    if mode == "full":
        extra = catalog_anchors(entities, labels_of(examples), settings, config.anchors,
                                config.seed)  # fmt: skip
        with _seeded(config.seed):
            steps = fine_tune_body(base.model, examples + extra, work, config,
                                   build_config.show_progress)  # fmt: skip
        base.model.save_pretrained(str(folder), create_model_card=False)
        _copy_source(base.path, folder)
        record.update(batch_size=config.batch_size, max_steps=config.max_steps, steps=steps,
                      learning_rate=config.learning_rate,
                      sampling_strategy=config.sampling_strategy, loss="CosineSimilarityLoss",
                      anchors=len(extra))  # fmt: skip
    elif bundle:  # head-only, bundled: the body's files, untouched
        shutil.copytree(base.path, folder)
    suffix = "setfit" if mode == "full" else "head"
    if not config.distill:
        return folder, suffix
    options = dict(config.distill) if isinstance(config.distill, Mapping) else {}
    if "vocabulary" not in options:
        options["vocabulary"] = distill_vocabulary(entities, examples, settings)
    with _seeded(config.seed):
        distill_static(folder, work / "static", options, record["base_model"]["id"])
    _copy_source(folder, work / "static")
    record["distilled"] = {
        "tool": "model2vec.distill",
        "pca_dims": options.get("pca_dims", DEFAULT_DISTILL_DIMS),
        "added_words": len(options["vocabulary"] or ()),
        **_jsonable({k: v for k, v in options.items() if k != "vocabulary"}),
    }
    return work / "static", suffix + "-static"


def _fit_head(
    source: str,
    suffix: str,
    examples: list[dict[str, str]],
    config: TrainConfig,
    record: dict[str, Any],
    bundle: bool,
    work: Path,
    embedding_dim: int | None,
) -> tuple[Encoder, Path]:
    """Fit the head on the examples' vectors of the final model (``source``: the bundled
    folder, or the registry model an unbundled head-only artifact names) and save it (in
    the bundled folder, else in ``work``); returns (the encoder the artifact is built
    with, named after the base model and ``suffix``; the head file)."""
    base_name = record["base_model"]["name"]
    encoder = load_encoder(source, embedding_dim=embedding_dim, show_progress=False)
    head = fit_head(encoder.encode([example["text"] for example in examples]),
                    [example["label"] for example in examples], config.head_c)  # fmt: skip
    head_file = head.save(Path(source) if bundle else work)
    if bundle:
        encoder = _renamed(encoder, Path(source), f"{base_name}-{suffix}",
                           base_id=f"{record['base_model']['id']} ({suffix})")  # fmt: skip
    record["head"] = {"type": "logistic-regression", "c": config.head_c, "labels": len(head.labels)}
    return encoder, head_file


def with_examples(
    entities: Iterable[Mapping[str, Any]] | str | os.PathLike[str],
    examples: Sequence[Mapping[str, str]],
    settings: NormalizerSettings,
) -> tuple[list[dict[str, Any]], int]:
    """(the catalog's entities with each example's (normalized) text added to the aliases
    of its label, how many texts were added); a text the entity already has, normalized as
    queries are, is not repeated."""
    extra: dict[str, list[str]] = {}
    for example in examples:
        extra.setdefault(example["label"], []).append(example["text"])
    out, count = [], 0
    for entity in read_catalog(entities):
        more = extra.get(entity["id"])
        if more:
            have = {normalize_text(t[:MAX_TEXT_CHARS], settings)
                    for t in (entity["name"], *entity["aliases"])}  # fmt: skip
            added = [text for text in dict.fromkeys(more) if text not in have]
            entity = {**entity, "aliases": [*entity["aliases"], *added]}
            count += len(added)
        out.append(dict(entity))
    return out, count


def labels_of(examples: Sequence[Mapping[str, str]]) -> set[str]:
    """The distinct labels of ``examples``."""
    return {example["label"] for example in examples}


def _renamed(encoder: Encoder, folder: Path, name: str, base_id: str) -> Encoder:
    """``encoder`` under a stable name (not its temp path), fingerprint over the final files."""
    spec = dataclasses.replace(encoder.spec, alias=name, model_id=base_id)
    return dataclasses.replace(
        encoder, model_name=name, spec=spec, fingerprint=fingerprint_dir(folder)
    )


def _jsonable(options: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: value if isinstance(value, int | float | str | bool | None) else str(value)
        for key, value in options.items()
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("setfit", "sentence-transformers", "transformers", "torch", "model2vec"):
        with contextlib.suppress(PackageNotFoundError):
            out[package] = version(package)
    return out
