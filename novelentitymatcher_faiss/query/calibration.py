"""Calibrated confidence: P(the top hit is the right entity), fitted per catalog at build time.

The build searches perturbed copies of the catalog's own texts (one-letter typos, a word
dropped or a name cut short, some unchanged) twice over one FAISS search: as they are
(positives when the top hit is their own entity) and with their own entity left out (the
near misses a name that is not in the catalog produces). A logistic model over
:data:`FEATURES` is fitted to those, and stored as plain numbers in the manifest's
``calibration`` section (no pickle). At query time every hit gets ``confidence``; a
``threshold`` applies to it, and :data:`DEFAULT_THRESHOLD` turns the confidence into the
decision "this entity, or none".
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import QueryError
from ..text.normalize import word_trigrams
from ..text.perturb import one_letter_typo, partial_text

#: Written in the manifest's ``calibration`` section; readers reject any other.
CALIBRATION_VERSION = 1
#: What the logistic model sees of a hit, in this order (see :func:`hit_features`).
FEATURES = (
    "score", "margin", "score_squared", "log_length", "trigram_jaccard",
    "query_trigrams_in_hit", "hit_trigrams_in_query", "indel_similarity",
    "levenshtein_similarity", "token_set_ratio", "partial_ratio", "spread",
    "query_words_in_hit", "hit_words_in_query", "length_ratio", "edit_distance", "one_edit",
    "prefix",
)  # fmt: skip
#: ``edit_distance`` (optimal string alignment: a swap of neighbours is one edit) is capped
#: at this many edits.
MAX_EDITS = 6
#: A calibrated artifact answers None below this confidence unless told otherwise. Chosen
#: from benchmarks/calibration_bench.py's sweep on six public catalogs with 10% of entities
#: held out: the highest cut that returns at least 90% of the right answers on each.
DEFAULT_THRESHOLD = 0.4
#: ``threshold="auto"``: :data:`DEFAULT_THRESHOLD` on confidence when the artifact is
#: calibrated, else the caller's old default on the raw score.
AUTO = "auto"
#: ``Matcher``'s cut on the raw score where there is no calibration (upstream's default).
SCORE_THRESHOLD = 0.7
#: Perturbed catalog texts searched to fit the model (each gives a positive and a negative);
#: the search of these is most of the stage's time (about a tuning search).
CALIBRATION_QUERIES = 2000
#: Calibration queries per match call (the progress bar's step).
CALIBRATION_BATCH = 500
#: Below this many entities no model is fitted (leaving one out says little).
MIN_ENTITIES = 20
#: Share of each kind among the calibration queries.
QUERY_KINDS = (("typo", 0.4), ("partial", 0.4), ("exact", 0.2))
#: A query takes its entity's name with this probability, else one of its aliases.
NAME_SHARE = 0.75
#: L2 penalty of the logistic fit, on standardized features.
L2_PENALTY = 1e-3


@dataclass(frozen=True)
class Calibration:
    """A fitted logistic model over :data:`FEATURES`: ``mean`` and ``scale`` standardize a
    feature row, then ``weights`` and ``bias`` give the log-odds of a correct hit.
    ``fitted_on`` and ``held_out`` describe the data and the figures on a held-out third."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    fitted_on: dict[str, Any]
    held_out: dict[str, Any]

    def confidence(self, features: np.ndarray) -> np.ndarray:
        """float64 (n,) in [0, 1] for features float64 (n, len(FEATURES))."""
        z = (features - np.asarray(self.mean)) / np.asarray(self.scale)
        logit = z @ np.asarray(self.weights) + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(logit, -40.0, 40.0)))

    def to_dict(self) -> dict[str, Any]:
        fields = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        return {"version": CALIBRATION_VERSION, "features": list(FEATURES), **fields}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Check and read a manifest's ``calibration`` section; ValueError names the fault."""
        if data.get("version") != CALIBRATION_VERSION:
            raise ValueError(f"calibration version {data.get('version')!r} is not "
                             f"{CALIBRATION_VERSION}")  # fmt: skip
        if list(data.get("features", [])) != list(FEATURES):
            raise ValueError(f"calibration features {data.get('features')!r} are not {FEATURES}")
        arrays = {key: tuple(float(v) for v in data[key]) for key in ("mean", "scale", "weights")}
        values = [*arrays["mean"], *arrays["scale"], *arrays["weights"], float(data["bias"])]
        if any(len(v) != len(FEATURES) for v in arrays.values()) or not all(
            math.isfinite(v) for v in values
        ) or min(arrays["scale"]) <= 0:
            raise ValueError("calibration mean, scale and weights must be finite, one per "
                             "feature, scales positive")  # fmt: skip
        return cls(**arrays, bias=float(data["bias"]), fitted_on=dict(data["fitted_on"]),
                   held_out=dict(data["held_out"]))  # fmt: skip


def hit_features(query: str, scores: list[float], texts: list[str]) -> list[list[float]]:
    """One row of :data:`FEATURES` per hit of one normalized ``query``: ``scores`` best first
    (up to the third, where the index has them), ``texts`` the hits' normalized texts (as
    many as rows wanted, at most ``len(scores)``). A hit's margin is its score minus the best
    other hit's (for the top hit: the second's); ``spread`` is its score minus the third's
    (the second's where there is no third). A missing runner-up (a filter that one entity
    passes) counts as a tie: margin and spread 0, the cautious reading."""
    from rapidfuzz import fuzz
    from rapidfuzz.distance import OSA, Levenshtein

    grams = word_trigrams(query)
    words = query.split()
    length = math.log1p(len(query))
    rows = []
    for i, text in enumerate(texts):
        score = scores[i]
        other = scores[0] if i else (scores[1] if len(scores) > 1 else score)
        third = scores[2] if len(scores) > 2 else (scores[1] if len(scores) > 1 else score)
        hit_grams, hit_words = word_trigrams(text), text.split()
        shared = len(grams & hit_grams)
        edits = OSA.distance(query, text, score_cutoff=MAX_EDITS)
        rows.append([
            score, score - other, score * score, length,
            shared / max(1, len(grams | hit_grams)),
            shared / max(1, len(grams)), shared / max(1, len(hit_grams)),
            fuzz.ratio(query, text) / 100, Levenshtein.normalized_similarity(query, text),
            fuzz.token_set_ratio(query, text) / 100, fuzz.partial_ratio(query, text) / 100,
            score - third,
            sum(w in hit_words for w in words) / max(1, len(words)),
            sum(w in words for w in hit_words) / max(1, len(hit_words)),
            min(len(query), len(text)) / max(1, len(query), len(text)),
            min(edits, MAX_EDITS), float(edits <= 1),
            float(text.startswith(query) or query.startswith(text)),
        ])  # fmt: skip
    return rows


def add_confidence(
    calibration: Calibration,
    queries: list[str],
    found: list[list[dict[str, Any]]],
    normalize: Callable[[str], str],
) -> None:
    """Set ``"confidence"`` on every hit of ``found`` (one list per normalized query, best
    first); ``normalize`` normalizes a hit's stored text as queries are."""
    rows = [row for query, hits in zip(queries, found, strict=True) if hits
            for row in hit_features(query, [h["score"] for h in hits],
                                    [normalize(h["text"]) for h in hits])]  # fmt: skip
    if not rows:
        return
    values = iter(calibration.confidence(np.array(rows)).tolist())
    for hits in found:
        for hit in hits:
            hit["confidence"] = next(values)


def resolve_threshold(
    threshold: float | str | None, calibrated: bool, fallback: float | None
) -> float | None:
    """The cut a ``threshold`` argument means: :data:`AUTO` is :data:`DEFAULT_THRESHOLD`
    (on confidence) when ``calibrated``, else ``fallback`` (on the score); a number or None
    is itself. Raises :class:`QueryError` (a ValueError) for anything else."""
    if threshold == AUTO:
        return DEFAULT_THRESHOLD if calibrated else fallback
    if threshold is None or (isinstance(threshold, int | float) and not isinstance(threshold, bool)
                             and math.isfinite(threshold)):  # fmt: skip
        return threshold
    raise QueryError(f"threshold must be a number, None or {AUTO!r}, got {threshold!r}")


def fit_logistic(
    features: np.ndarray, labels: np.ndarray, l2: float = L2_PENALTY, steps: int = 50
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Newton's method on the penalized log-loss of ``features`` float64 (n, f) against
    ``labels`` float (n,) of 0/1: (mean (f,), scale (f,), weights (f,), bias)."""
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = np.column_stack([(features - mean) / scale, np.ones(len(features))])
    w = np.zeros(z.shape[1])
    penalty = l2 * np.eye(len(w))
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -40.0, 40.0)))
        gradient = z.T @ (p - labels) + penalty @ w
        hessian = (z * (p * (1 - p))[:, None]).T @ z + penalty
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return mean, scale, w[:-1], float(w[-1])


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (n,) for 0/1 ``labels`` (n,), ties counted
    half; nan when one class is missing."""
    labels = np.asarray(labels, dtype=bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    sorted_scores = np.asarray(scores)[order]
    _, start, count = np.unique(sorted_scores, return_index=True, return_counts=True)
    for s, c in zip(start, count, strict=True):  # average ranks over ties
        if c > 1:
            ranks[order[s : s + c]] = s + (c + 1) / 2
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def calibration_error(confidence: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: the share-weighted gap between mean confidence and the
    share correct in ``bins`` equal-width confidence bins."""
    which = np.minimum((np.asarray(confidence) * bins).astype(int), bins - 1)
    labels = np.asarray(labels, dtype=float)
    gap = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            gap += inside.mean() * abs(confidence[inside].mean() - labels[inside].mean())
    return float(gap)


def decision_figures(
    confidence: np.ndarray, labels: np.ndarray, threshold: float = DEFAULT_THRESHOLD
) -> dict[str, float]:
    """AUROC, calibration error and, at ``threshold``, the share answered, precision (the
    share of answers that are right) and recall (the share of right top hits answered)."""
    labels = np.asarray(labels, dtype=bool)
    answered = confidence >= threshold
    return {
        "auroc": round(auroc(confidence, labels), 4),
        "ece": round(calibration_error(confidence, labels), 4),
        "threshold": threshold,
        "answered": round(float(answered.mean()), 4),
        "precision": round(float(labels[answered].mean()), 4) if answered.any() else None,
        "recall": round(float(answered[labels].mean()), 4) if labels.any() else None,
    }


def calibration_queries(
    texts_of: Callable[[int], list[str]], n_entities: int, count: int, seed: int
) -> tuple[list[str], np.ndarray]:
    """``count`` perturbed queries of entities drawn from ``n_entities`` (``texts_of(row)``:
    its name, then its aliases): (queries, entity rows int64 (count,)). Seeded."""
    rng = random.Random(seed)
    kinds, shares = zip(*QUERY_KINDS, strict=True)
    owners = [rng.randrange(n_entities) for _ in range(count)]
    texts = {row: texts_of(row) for row in sorted(set(owners))}
    queries = []
    for owner in owners:
        names = texts[owner]
        text = names[0] if len(names) == 1 or rng.random() < NAME_SHARE else rng.choice(names[1:])
        kind = rng.choices(kinds, shares)[0]
        if kind == "typo":
            text = one_letter_typo(text, rng)
        elif kind == "partial":
            text = partial_text(text, rng)
        queries.append(text)
    return queries, np.asarray(owners, dtype=np.int64)


def calibrate(
    index: Any, seed: int = 0, count: int = CALIBRATION_QUERIES, show_progress: bool = False
) -> Calibration | None:
    """Fit a :class:`Calibration` for an opened, uncalibrated artifact ``index`` (a
    :class:`~.match_index.MatchIndex`); None under
    :data:`MIN_ENTITIES` entities. ``count`` queries matched at ``top_k=4``, in batches
    under a progress bar."""
    if len(index) < MIN_ENTITIES:
        return None
    from tqdm.auto import tqdm  # build path only: the query path stays free of it

    def texts_of(row: int) -> list[str]:
        record = index.entity(row)
        return [record["name"], *record.get("aliases", [])]

    queries, owners = calibration_queries(texts_of, index.n_entities, count, seed)
    own_ids = index.ids.take(owners.tolist())
    found: list[list[dict[str, Any]]] = []
    with tqdm(total=len(queries), desc="calibrate", unit="q", disable=not show_progress) as bar:
        for start in range(0, len(queries), CALIBRATION_BATCH):
            batch = queries[start : start + CALIBRATION_BATCH]
            found += index.match(batch, top_k=4, threshold=None)
            bar.update(len(batch))
    rows, labels = [], []
    for query, own, hits in zip(queries, own_ids, found, strict=True):
        normalized = index.normalize_query(query)
        if not normalized or not hits:
            continue
        for positive in (True, False):
            kept = hits if positive else [h for h in hits if h["id"] != own]
            if not kept:
                continue
            scores = [h["score"] for h in kept[:3]]
            rows += hit_features(normalized, scores, [index.normalize_query(kept[0]["text"])])
            labels.append(float(positive and kept[0]["id"] == own))
    features, labels_array = np.array(rows), np.array(labels)
    if len(set(labels)) < 2:
        return None
    split = np.random.default_rng(seed).random(len(labels_array)) < 2 / 3
    model = _model(features[split], labels_array[split])
    held = decision_figures(model.confidence(features[~split]), labels_array[~split])
    fitted_on = {"queries": len(queries), "examples": len(labels_array),
                 "correct_share": round(float(labels_array.mean()), 4), "seed": seed,
                 "kinds": dict(QUERY_KINDS), "held_out_share": round(1 / 3, 4)}  # fmt: skip
    return _model(features, labels_array, fitted_on,
                  {**held, "examples": int((~split).sum())})  # fmt: skip


def _model(
    features: np.ndarray,
    labels: np.ndarray,
    fitted_on: dict[str, Any] | None = None,
    held_out: dict[str, Any] | None = None,
) -> Calibration:
    """A :class:`Calibration` fitted on ``features`` and ``labels`` (:func:`fit_logistic`),
    its numbers rounded to 8 digits for the manifest."""
    mean, scale, weights, bias = fit_logistic(features, labels)
    return Calibration(_rounded(mean), _rounded(scale), _rounded(weights), round(bias, 8),
                       fitted_on or {}, held_out or {})  # fmt: skip


def _rounded(values: np.ndarray) -> tuple[float, ...]:
    return tuple(round(float(v), 8) for v in values)
