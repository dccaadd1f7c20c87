"""Why a query got the answer it got: ``explain_match`` and ``diagnose`` (upstream's names).

Both work on an opened index (a :class:`~.match_index.MatchIndex` or shard set) and read
the same vectors the search scores, so every figure they print is the one ``match`` used:
``score == (1 - weight) * dense + weight * lexical`` for every text of an entity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import QueryError
from ..text.lexical import combine, lexical_vectors
from ..text.normalize import normalize_text, word_trigrams
from .calibration import resolve_threshold

#: A best hit ahead of the runner-up by less than this is reported as ambiguous.
AMBIGUOUS_MARGIN = 0.02
#: ``explain_match`` reports the entity's rank among this many best entities.
RANK_DEPTH = 10
_MAX_SHARED = 20  # n-grams listed by explain_match


def _first_part(index: Any) -> Any:
    """The artifact whose encoder and settings encode queries (the first shard of a set)."""
    return index.shards[0] if hasattr(index, "shards") else index


def _normalized(index: Any, query: object) -> str:
    part = _first_part(index)
    if not isinstance(query, str):
        raise QueryError(f"expected a string query, got {type(query).__name__}")
    return normalize_text(query[: part.max_text_chars], part.normalizer)


def text_scores(index: Any, query: str, texts: list[str]) -> list[dict[str, Any]]:
    """Score of normalized ``query`` against each normalized text, with its parts: a list
    of ``{"text", "score", "dense", "lexical"}`` (``lexical`` None for dense-only)."""
    part = _first_part(index)
    dense_vectors = part.encoder.encode([query, *texts])
    dense = dense_vectors[1:] @ dense_vectors[0]
    lexical: list[float | None] = [None] * len(texts)
    vectors = dense_vectors  # the index vectors, as featurize makes them
    if part.lexical is not None:
        lex = lexical_vectors([query, *texts], part.lexical)
        lexical = (lex[1:] @ lex[0]).tolist()
        vectors = combine(dense_vectors, lex, part.lexical.weight)
    scores = np.clip(vectors[1:] @ vectors[0], -1.0, 1.0)
    return [{"text": t, "score": float(s), "dense": float(d), "lexical": x}
            for t, s, d, x in zip(texts, scores, dense, lexical, strict=True)]  # fmt: skip


def explain_match(index: Any, query: str, entity_id: str) -> dict[str, Any]:
    """Why ``query`` scores what it does against entity ``entity_id``.

    Returns ``{"query", "normalized", "entity_id", "name", "score", "text", "dense",
    "lexical", "weight", "texts" (every name and alias, scored), "shared_words",
    "shared_ngrams", "rank"}``; ``text`` is the entity's best-scoring text, whose score is
    the entity's; ``rank`` its 1-based place among the ``RANK_DEPTH`` best entities (None
    below them). Raises :class:`QueryError` for an unknown or removed id.
    """
    record = index.get(entity_id) if isinstance(entity_id, str) else None
    if record is None:
        raise QueryError(f"explain_match: no entity {entity_id!r} in this index")
    normalized = _normalized(index, query)
    part = _first_part(index)
    texts = list(dict.fromkeys(
        t for t in (normalize_text(x[: part.max_text_chars], part.normalizer)
                    for x in (record["name"], *record.get("aliases", []))) if t
    ))  # fmt: skip
    out: dict[str, Any] = {"query": query, "normalized": normalized, "entity_id": entity_id,
                           "name": record["name"],
                           "weight": part.lexical.weight if part.lexical else 0.0}  # fmt: skip
    if not normalized:
        return {**out, "score": None, "text": None, "dense": None, "lexical": None,
                "texts": [], "shared_words": [], "shared_ngrams": [], "rank": None}  # fmt: skip
    scored = sorted(text_scores(index, normalized, texts), key=lambda t: -t["score"])
    best = scored[0]
    ranked = index.match(normalized, top_k=min(RANK_DEPTH, len(index)))
    rank = next((i + 1 for i, hit in enumerate(ranked) if hit["id"] == entity_id), None)
    grams = sorted(word_trigrams(normalized) & word_trigrams(best["text"]))
    return {
        **out,
        "score": best["score"], "text": best["text"], "dense": best["dense"],
        "lexical": best["lexical"], "texts": scored,
        "shared_words": sorted(set(normalized.split()) & set(best["text"].split())),
        "shared_ngrams": [g.strip() or g for g in grams][:_MAX_SHARED],
        "rank": rank,
    }  # fmt: skip


def diagnose(
    index: Any,
    query: str,
    *,
    threshold: float | str | None = None,
    top_k: int = 5,
    where: Mapping[str, Any] | None = None,
    candidates: Iterable[str] | None = None,
) -> dict[str, Any]:
    """The best candidates of ``query`` with their score parts, and the decision that
    ``match(query, threshold=threshold)`` takes, with the reason.

    Returns ``{"query", "normalized", "threshold", "candidates" (hits with "dense",
    "lexical", "weight", and "confidence" on a calibrated artifact given a threshold),
    "decision": {"id", "score", "confidence", "matched", "is_novel", "margin", "ambiguous",
    "reason"}}``; ``margin`` is the best score minus the runner-up's, ``ambiguous`` when
    under ``AMBIGUOUS_MARGIN``; ``is_novel`` when a calibrated artifact finds no entity
    likely (the query names something the catalog does not hold, or nothing clearly).
    """
    normalized = _normalized(index, query)
    calibrated = getattr(index, "calibration", None) is not None and threshold is not None
    cut = resolve_threshold(threshold, calibrated, None)
    out: dict[str, Any] = {"query": query, "normalized": normalized, "threshold": cut}
    decision = {"id": None, "score": None, "confidence": None, "matched": False,
                "is_novel": False, "margin": None, "ambiguous": False}  # fmt: skip
    if not normalized:
        decision["reason"] = "the query normalizes to empty text"
        return {**out, "candidates": [], "decision": decision}
    hits = index.match(query, top_k=top_k, explain=True, where=where, candidates=candidates,
                       threshold=cut if calibrated else None)  # fmt: skip
    if not hits:
        reason = "no entity passes the filter" if where or candidates else "the index is empty"
        return {**out, "candidates": [], "decision": {**decision, "reason": reason}}
    best = hits[0]
    margin = best["score"] - hits[1]["score"] if len(hits) > 1 else None
    ambiguous = margin is not None and margin < AMBIGUOUS_MARGIN
    value, name = (best["confidence"], "confidence") if calibrated else (best["score"], "score")
    matched = best["accepted"] if calibrated else cut is None or value >= cut
    if not matched:
        reason = f"best {name} {value:.3f} is below the threshold {cut}"
        if calibrated:
            reason += ": no entity is likely, the query reads as novel"
    else:
        clears = "" if cut is None else f" clears the threshold {cut}"
        reason = f"best {name} {value:.3f}{clears}" + (
            "" if margin is None else f", score {margin:.3f} ahead of {hits[1]['id']!r}"
        )
    if ambiguous:
        reason += f"; ambiguous: runner-up within {AMBIGUOUS_MARGIN}"
    decision.update(id=best["id"] if matched else None, score=best["score"],
                    confidence=best.get("confidence"), matched=matched,
                    is_novel=calibrated and not matched, margin=margin, ambiguous=ambiguous,
                    reason=reason)  # fmt: skip
    return {**out, "candidates": hits, "decision": decision}
