"""``Matcher``: upstream novelentitymatcher's API, served from a persisted FAISS index."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .artifact.files import atomic_directory, file_records, list_files
from .artifact.manifest import read_manifest, write_manifest
from .errors import NemFaissError, TrainingError
from .models.registry import DEFAULT_MODEL
from .query.calibration import AUTO, SCORE_THRESHOLD, resolve_threshold
from .query.match_index import MatchIndex, load_index
from .query.scorers import SCORERS
from .train.training import MODES


class Matcher:
    """Match texts to entities: ``Matcher(entities).fit()`` then ``.match(text)``.

    ``fit`` builds a memory-mapped FAISS artifact (in a temp dir until :meth:`save`);
    ``Matcher.load`` / ``Matcher.from_index`` open one. ``embedding_dim`` truncates the
    model's vectors (Matryoshka) before normalization.

    ``mode`` is "zero-shot", "head-only" or "full" (None: chosen by ``fit`` from the
    training data). ``scorer`` is "hybrid" (FAISS search in the fine-tuned space, its best
    candidates re-ranked by the classifier head: the default after training), "index" (the
    search alone) or "head" (the classifier head, labelled entities only); None uses the
    artifact's default ("index" without training).

    ``threshold``: "auto" answers None below a confidence of ``DEFAULT_THRESHOLD`` (0.4) on a
    calibrated artifact searched by the index scorer (:mod:`.calibration`), and below a
    score of ``SCORE_THRESHOLD`` (0.7) otherwise; a number is a cut on confidence where
    there is one, else on the score.
    """

    def __init__(
        self,
        entities: Iterable[Mapping[str, Any]] | str | Path | None = None,
        model: str = "default",
        threshold: float | str = AUTO,
        normalize: bool = True,
        mode: str | None = None,
        embedding_dim: int | None = None,
        index_type: str = "auto",
        show_progress: bool = False,
        scorer: str | None = None,
    ) -> None:
        if mode is not None and mode not in MODES:
            raise TrainingError(f"mode {mode!r} is not available; choose one of {MODES}")
        if scorer is not None and scorer not in SCORERS:
            raise NemFaissError(f"scorer {scorer!r} is not available; choose one of {SCORERS}")
        resolve_threshold(threshold, True, None)  # QueryError (a NemFaissError) if bad
        self.entities = entities
        self.model = DEFAULT_MODEL if model == "default" else model
        self.threshold = threshold
        self.normalize = normalize
        self.mode = mode
        self.scorer = scorer
        self.embedding_dim = embedding_dim
        self.index_type = index_type
        self.show_progress = show_progress
        self.index: MatchIndex | None = None
        self._workdir: Path | None = None
        self._scorers: dict[str | None, Any] = {}  # scorer name -> what answers match

    # -- building ------------------------------------------------------------------------
    def fit(
        self,
        training_data: Sequence[Mapping[str, str]] | str | Path | None = None,
        mode: str | None = None,
        num_epochs: int = 1,
        batch_size: int | None = None,
        seed: int = 0,
        texts: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> Matcher:
        """Build the index from ``entities``, training first when examples are given.

        ``training_data`` is ``[{"text", "label": entity_id}]`` (or a .csv/.jsonl path).
        ``mode`` (else the one given to the constructor, else chosen from the data):
        "zero-shot" builds with ``model``; "head-only" fits the classifier head on the
        frozen model; "full" fine-tunes the body with SetFit first (static models fall back
        to mpnet, with a warning). ``batch_size`` is the training batch (16) when training,
        the encoding batch otherwise. Other keyword arguments go to
        :func:`~.training.train_index` (``max_steps``, ``distill``,
        ``learning_rate``, ...) or, zero-shot, to :func:`build_index`. ``texts`` and
        ``labels`` (upstream's other form) give the same examples as two lists. Returns
        ``self``.
        """
        from .index.build import build_index
        from .train.training import train_index

        if self.entities is None:
            raise NemFaissError(
                "this Matcher has no entities to fit; use Matcher.load(path) instead"
            )
        training_data = _examples(training_data, texts, labels)
        mode = mode or self.mode
        if mode is not None and mode not in MODES:
            raise TrainingError(f"mode {mode!r} is not available; choose one of {MODES}")
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="nem-faiss-"))
            weakref.finalize(self, shutil.rmtree, self._workdir, True)
        target = self._workdir / "index"
        options = {"model": self.model, "embedding_dim": self.embedding_dim, "seed": seed,
                   "index_type": self.index_type, "normalize": self.normalize,
                   "show_progress": self.show_progress, "overwrite": True, **kwargs}  # fmt: skip
        if not training_data and mode in (None, "zero-shot"):
            if batch_size is not None:
                options["batch_size"] = batch_size
            self.index = build_index(self.entities, target, **options)
        else:
            self.index = train_index(self.entities, training_data, target, mode=mode,
                                     num_epochs=num_epochs,
                                     batch_size=16 if batch_size is None else batch_size,
                                     **options)  # fmt: skip
        self._scorers = {}
        self.mode = self.index.manifest.training_mode
        return self

    async def fit_async(self, *args: Any, **kwargs: Any) -> Matcher:
        """:meth:`fit` in a worker thread."""
        return await asyncio.to_thread(self.fit, *args, **kwargs)

    # -- matching ------------------------------------------------------------------------
    def match(
        self, texts: str | Sequence[str], top_k: int = 1, threshold: float | str | None = None,
        **options: Any,
    ) -> Any:
        """Upstream's shape: dict or None (one text, ``top_k=1``), lists otherwise.

        ``options`` are those of :meth:`~.protocol.Matchable.match`: ``candidates`` (entity
        ids) and ``where`` ({metadata column: condition}) restrict the search to those
        entities; ``metadata=True`` adds each hit's ``"metadata"``; ``nprobe``,
        ``batch_size``, ``explain``.

        ``threshold`` (None: this Matcher's) as in the class docstring: on a calibrated
        artifact each hit carries ``confidence`` and a text with no likely entity gets None.

        With the "hybrid" scorer (the default after training), ``score`` is the cosine plus
        ``HYBRID_WEIGHT`` times the head's probability of the entity; with "head" it is the
        head's probability, and only labelled entities can be returned.
        """
        if self.index is None:
            raise NemFaissError("call fit() (or Matcher.load) before match()")
        threshold = self.threshold if threshold is None else threshold
        if self.scorer not in self._scorers:
            from .query.scorers import scorer_for

            self._scorers[self.scorer] = scorer_for(self.index, self.scorer)
        scorer = self._scorers[self.scorer]
        return scorer.match(texts, top_k=top_k, threshold=_on(scorer, threshold), **options)

    def explain_match(self, query: str, entity_id: str) -> dict[str, Any]:
        """Why ``query`` scores what it does against ``entity_id``: its best text, the dense
        and lexical parts of the score, shared words and n-grams, its rank, and whether
        :meth:`match` at this Matcher's threshold would answer it (``above_threshold``; on a
        calibrated artifact with ``confidence``, the entity must be the top hit and clear the
        threshold on confidence; see :func:`~.diagnostics.explain_match`). Scores are the
        index's (for a trained artifact, before the head's re-ranking)."""
        from .query.diagnostics import explain_match

        index = self._opened()
        explained = explain_match(index, query, entity_id)
        score = explained["score"]
        threshold = _on(index, self.threshold)
        explained["threshold"] = threshold
        if index.calibration is not None and threshold is not None:
            top = index.match(query, threshold=0.0)
            own = top is not None and top["id"] == entity_id
            explained["confidence"] = top["confidence"] if own else None
            explained["above_threshold"] = own and top["confidence"] >= resolve_threshold(
                threshold, True, None)
        else:
            explained["above_threshold"] = score is not None and (
                threshold is None or score >= threshold)
        return explained

    def diagnose(
        self,
        query: str,
        top_k: int = 5,
        where: Mapping[str, Any] | None = None,
        candidates: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """The best ``top_k`` candidates of ``query`` with their score parts, and the
        decision at this Matcher's threshold with its reason (see
        :func:`~.diagnostics.diagnose`); index scores, as :meth:`explain_match`."""
        from .query.diagnostics import diagnose

        index = self._opened()
        return diagnose(index, query, threshold=_on(index, self.threshold), top_k=top_k,
                        where=where, candidates=candidates)  # fmt: skip

    def get_training_info(self) -> dict[str, Any]:
        """How the index was made: ``{"trained", "mode", "model", "entities", "scorer",
        "threshold", **the artifact's training record}`` (examples, labels, steps, time and
        versions for a trained artifact)."""
        index = self._opened()
        training = dict(index.manifest.training or {})
        training.pop("mode", None)
        return {
            "trained": index.manifest.training is not None,
            "mode": index.manifest.training_mode,
            "model": index.manifest.model.name,
            "entities": len(index),
            "scorer": self.scorer or index.manifest.default_scorer,
            "threshold": self.threshold,
            **training,
        }

    def _opened(self) -> MatchIndex:
        if self.index is None:
            raise NemFaissError("call fit() (or Matcher.load) first")
        return self.index

    async def match_async(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`match` in a worker thread."""
        return await asyncio.to_thread(self.match, *args, **kwargs)

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Copy the built artifact to ``path`` atomically, recording this Matcher's settings."""
        if self.index is None:
            raise NemFaissError("nothing to save: call fit() first")
        source = self.index.path
        with atomic_directory(Path(path), overwrite=overwrite) as tmp:
            for name in list_files(source):
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source / name, tmp / name)
            settings = {"threshold": self.threshold, "mode": self.mode, "scorer": self.scorer}
            write_manifest(tmp, read_manifest(tmp).replace(matcher=settings,
                                                           files=file_records(tmp)))  # fmt: skip
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, *, verify: str = "fast") -> Matcher:
        """Open a saved Matcher (or any artifact) from ``path``."""
        index = load_index(path, verify=verify)
        settings = index.manifest.matcher or {}
        matcher = cls(
            model=index.manifest.model.name,
            threshold=settings.get("threshold", AUTO),
            mode=settings.get("mode") or index.manifest.training_mode,
            embedding_dim=index.dim,
            index_type=index.manifest.index.type,
            scorer=settings.get("scorer"),
        )
        matcher.index = index
        return matcher

    @classmethod
    def from_index(
        cls, path: str | Path, *, threshold: float = 0.7, verify: str = "fast"
    ) -> Matcher:
        """Wrap an artifact built by :func:`build_index` (or ``nem-faiss build``)."""
        matcher = cls.load(path, verify=verify)
        matcher.threshold = threshold
        return matcher

    def __len__(self) -> int:
        return 0 if self.index is None else len(self.index)


def _on(scorer: Any, threshold: float | str | None) -> float | str | None:
    """``threshold`` as ``scorer`` (an index, shard set or trained scorer) takes it:
    ``"auto"`` stays where it has a confidence model, else it is ``SCORE_THRESHOLD`` on the
    score."""
    if threshold == AUTO and getattr(scorer, "calibration", None) is None:
        return SCORE_THRESHOLD
    return threshold


def _examples(
    training_data: Sequence[Mapping[str, str]] | str | Path | None,
    texts: Sequence[str] | None,
    labels: Sequence[str] | None,
) -> Sequence[Mapping[str, str]] | str | Path | None:
    """``training_data``, or upstream's other form (``texts`` and ``labels``, two lists of
    the same length) as ``[{"text", "label"}]``; TrainingError when both are given."""
    if texts is None and labels is None:
        return training_data
    if training_data is not None:
        raise TrainingError("give training_data or texts and labels, not both")
    if texts is None or labels is None or len(texts) != len(labels):
        raise TrainingError("texts and labels must be two lists of the same length")
    return [{"text": t, "label": y} for t, y in zip(texts, labels, strict=True)]
