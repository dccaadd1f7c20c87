"""One query protocol: ``match`` for every kind of index.

:class:`Matchable` holds the one ``match``: check the queries, normalize them with its
:attr:`~Matchable.front` artifact, encode them once (:meth:`~Matchable.encode_queries`),
search them (:meth:`~Matchable.search_encoded`, the part each kind supplies), add
confidence and cut on it where there is a calibration, explain, add metadata and shape the
answer. :class:`~.match_index.MatchIndex`, :class:`~.shards.ShardedIndex` and the trained
scorers of :mod:`.scorers` are Matchables. Results have upstream's shape
``{"id", "score", "text"}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..artifact.columns import CORE_FIELDS
from ..errors import QueryError
from ..text.lexical import featurize, lexical_vectors
from .calibration import Calibration, add_confidence, resolve_threshold
from .filters import Selection, make_selection

if TYPE_CHECKING:
    from .match_index import MatchIndex

Result = dict[str, Any]
Answer = Result | list[Result] | None | list[Result | None] | list[list[Result]]


@dataclass(frozen=True)
class Search:
    """One search of encoded queries: at most ``top_k`` hits per query, best first, one per
    entity, scores at ``threshold`` or above (None: all), ``nprobe`` the search breadth for
    this call (IVF lists, or an HNSW index's efSearch; None: the stored one), ``selection``
    the entities a filter keeps (None: all)."""

    top_k: int
    threshold: float | None = None
    nprobe: int | None = None
    selection: Selection | None = None

    def __post_init__(self) -> None:
        nprobe = self.nprobe
        if nprobe is not None and (isinstance(nprobe, bool) or not isinstance(nprobe, int)
                                   or nprobe < 1):  # fmt: skip
            raise QueryError(f"nprobe must be a positive int, got {nprobe!r}")


class Matchable:
    """What answers :meth:`match`. A subclass sets :attr:`front` (the artifact whose
    normalizer, encoder and lexical settings shape the queries) and :attr:`calibration`,
    and implements :meth:`search_encoded` and ``get(entity_id)`` (a stored record or None)."""

    front: MatchIndex
    calibration: Calibration | None = None

    def match(
        self,
        texts: str | Sequence[str],
        top_k: int = 1,
        threshold: float | str | None = None,
        nprobe: int | None = None,
        batch_size: int = 4096,
        explain: bool = False,
        where: Mapping[str, Any] | None = None,
        candidates: Iterable[str] | None = None,
        metadata: bool = False,
    ) -> Answer:
        """Match one text or a list of texts.

        A str with ``top_k=1`` gives a dict ``{"id", "score", "text"}`` or None; ``top_k>1``
        a list of dicts (best first, one per entity). A list gives a list of those.
        ``threshold=None`` (the default) keeps every hit, ranked by ``score``. With a
        :attr:`calibration` (:mod:`.calibration`) any other ``threshold`` adds
        ``"confidence"``, the probability that the hit is the right entity, and applies to
        it: ``"auto"`` drops hits under ``DEFAULT_THRESHOLD`` (0.4), so a text with no likely
        entity gets None (what :class:`~novelentitymatcher_faiss.Matcher` does by default);
        0 adds confidence and drops nothing. Without one a number applies to ``score`` and
        ``"auto"`` keeps every hit. Texts that normalize to empty get no hit. ``None`` or
        non-string items raise :class:`QueryError`. ``nprobe`` overrides the stored search
        breadth for this call: IVF lists probed, or an HNSW index's efSearch.

        ``explain=True`` with confidence keeps the hits under the cut, marked: every hit
        has ``"accepted"``, and the top hit ``"is_novel"`` (True where ``match`` without
        ``explain`` answers None) and ``"reason"``. It also adds ``"dense"`` and
        ``"lexical"`` cosines and the ``"weight"`` of the lexical part to each hit;
        ``score == (1 - weight) * dense + weight * lexical`` for index scores.

        ``where`` ({column: condition}, see :meth:`.columns.Columns.mask`) and
        ``candidates`` (entity ids) restrict the search to the entities that meet every
        condition, inside the FAISS search (:mod:`.filters`); ``metadata=True`` adds each
        hit's ``"metadata"`` (the entity's fields other than id, name and aliases).
        """
        single = isinstance(texts, str)
        queries = [texts] if single else as_query_list(texts)
        top_k = check_top_k(top_k)
        selection = make_selection(where, candidates)
        calibration = None if threshold is None else self.calibration  # None: raw hits
        cut = resolve_threshold(threshold, calibration is not None, None)
        if calibration is None:
            search = Search(top_k, cut, nprobe, selection)
        else:  # the top hit's margin and spread need the top 3; confidence decides the cut
            search = Search(max(top_k, 3), None, nprobe, selection)
        out: list[list[Result]] = []
        for start in range(0, len(queries), batch_size):
            chunk = queries[start : start + batch_size]
            out.extend(self._answer(chunk, start, search, calibration, cut, top_k, explain,
                                    batch_size))  # fmt: skip
        if metadata:
            add_metadata(out, self)
        shaped = [(hits[0] if hits else None) if top_k == 1 else hits for hits in out]
        return shaped[0] if single else shaped

    def _answer(
        self,
        chunk: list[Any],
        start: int,
        search: Search,
        calibration: Calibration | None,
        cut: float | None,
        top_k: int,
        explain: bool,
        batch_size: int,
    ) -> list[list[Result]]:
        """The hits of each query of ``chunk`` (``start``: the first one's position):
        normalized, encoded, searched; with a ``calibration`` given confidence and cut on
        it (at ``top_k``); with ``explain`` their score parts."""
        norm = [self.front.normalize_query(q, start + i) for i, q in enumerate(chunk)]
        keep = [i for i, q in enumerate(norm) if q]
        results: list[list[Result]] = [[] for _ in chunk]
        if not keep:
            return results
        texts = [norm[i] for i in keep]
        found = self.search_encoded(self.encode_queries(texts, batch_size), search)
        if calibration is not None:
            found = decide(calibration, self.front, texts, found, top_k, cut, explain)
        if explain:
            explain_hits(self.front, texts, found)
        for i, hits in zip(keep, found, strict=True):
            results[i] = hits
        return results

    def encode_queries(self, texts: list[str], batch_size: int = 4096) -> np.ndarray:
        """Index vectors of normalized ``texts``, float32 (n, dim)."""
        front = self.front
        return featurize(texts, front.encoder, front.lexical, batch_size)

    def search_encoded(self, vectors: np.ndarray, search: Search) -> list[list[Result]]:
        """The hits of encoded queries float32 (nq, dim), as ``search`` asks."""
        raise NotImplementedError

    def search_vectors(
        self,
        queries: np.ndarray,
        top_k: int = 1,
        threshold: float | None = None,
        nprobe: int | None = None,
    ) -> list[list[Result]]:
        """Search pre-encoded queries, float32 (nq, dim) L2-normalized (or (dim,) for one).

        Returns one list of result dicts per query, best first.
        """
        dim = self.front.dim
        array = np.asarray(queries, dtype=np.float32)
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != dim:
            raise QueryError(f"query vectors must have shape (n, {dim}), got {np.shape(queries)}")
        if not np.isfinite(array).all():
            raise QueryError("query vectors contain NaN or infinity")
        return self.search_encoded(array, Search(check_top_k(top_k), threshold, nprobe))

    def get(self, entity_id: str) -> dict[str, Any] | None:
        """The stored record of ``entity_id``, or None."""
        raise NotImplementedError


def decide(
    calibration: Calibration,
    front: MatchIndex,
    queries: list[str],
    found: list[list[Result]],
    top_k: int,
    cut: float | None,
    explain: bool = False,
) -> list[list[Result]]:
    """Add confidence to each query's hits, keep those at ``cut`` or above, best ``top_k``.
    With ``explain`` nothing is dropped: each hit says whether it is ``accepted``, and each
    query's top hit whether the query ``is_novel`` (no hit accepted), with the ``reason``."""
    add_confidence(calibration, queries, found, front.normalize_query)
    if not explain:
        return [[h for h in hits[:top_k] if cut is None or h["confidence"] >= cut]
                for hits in found]  # fmt: skip
    for hits in found:
        for hit in hits:
            hit["accepted"] = cut is None or hit["confidence"] >= cut
        if hits:
            top = hits[0]
            top["is_novel"] = not top["accepted"]
            sign = ">=" if top["accepted"] else "<"
            top["reason"] = (f"confidence {top['confidence']:.3f} {sign} threshold {cut}"
                             + (": no entity is likely" if top["is_novel"] else ""))  # fmt: skip
    return [hits[:top_k] for hits in found]


def explain_hits(front: MatchIndex, queries: list[str], found: list[list[Result]]) -> None:
    """Add the dense and lexical cosines of every hit (and the lexical weight), re-encoding
    only the hit texts, in place."""
    pairs = [(query, front.normalize_query(hit["text"]))
             for query, hits in zip(queries, found, strict=True) for hit in hits]  # fmt: skip
    if not pairs:
        return
    left, right = [q for q, _ in pairs], [t for _, t in pairs]
    encoder, lexical = front.encoder, front.lexical
    dense = np.einsum("nd,nd->n", encoder.encode(left), encoder.encode(right))
    cosines = np.full(len(pairs), np.nan)
    if lexical is not None:
        cosines = np.einsum("nd,nd->n", lexical_vectors(left, lexical),
                            lexical_vectors(right, lexical))  # fmt: skip
    weight = lexical.weight if lexical else 0.0
    hits = [hit for row in found for hit in row]
    for hit, d, x in zip(hits, dense, cosines, strict=True):
        hit.update(dense=float(d), lexical=None if np.isnan(x) else float(x), weight=weight)


def check_selection(index: Any, selection: Selection) -> None:
    """Raise :class:`QueryError` when ``selection`` names a column that ``index`` (a
    :class:`MatchIndex` or a shard set) lacks, or a candidate id it does not hold."""
    known = index.column_names()
    missing = sorted({name for name, _ in selection.where} - set(known))
    if missing:
        raise QueryError(f"where: no column {missing[0]!r} in this index; columns: {known}")
    if selection.candidates is not None:
        unknown = sorted(c for c in selection.candidates if not index.holds(c))
        if unknown:
            raise QueryError(
                f"candidates: {len(unknown)} id(s) not in this index (unknown or removed), "
                f"e.g. {unknown[:3]}"
            )


def add_metadata(found: list[list[Result]], records: Any) -> None:
    """Add ``"metadata"`` (the entity's fields other than id, name and aliases, from
    ``records.get(id)``) to every hit, in place."""
    for hits in found:
        for hit in hits:
            record = records.get(hit["id"]) or {}
            hit["metadata"] = {k: v for k, v in record.items() if k not in CORE_FIELDS}


def merge_hits(per_part: list[list[list[Result]]], top_k: int) -> list[list[Result]]:
    """Per query: the hits of every part (shard or layer), best first, one per entity id,
    at most ``top_k``."""
    merged = []
    for hits in zip(*per_part, strict=True):
        best: dict[str, Result] = {}
        for hit in sorted((h for part in hits for h in part), key=lambda h: -h["score"]):
            best.setdefault(hit["id"], hit)
            if len(best) == top_k:
                break
        merged.append(list(best.values()))
    return merged


def as_query_list(texts: object) -> list[Any]:
    """``texts`` (a sequence of queries) as a list; QueryError for None, bytes, a dict or a
    non-iterable (a single str is the caller's case, not this one's)."""
    if texts is None:
        raise QueryError("query is None; pass a string or a list of strings")
    if isinstance(texts, bytes | dict) or not hasattr(texts, "__iter__"):
        raise QueryError(f"expected a string or a list of strings, got {type(texts).__name__}")
    return list(texts)


def check_top_k(top_k: object) -> int:
    """``top_k`` as an int >= 1; QueryError otherwise (bools included)."""
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 1:
        raise QueryError(f"top_k must be a positive int, got {top_k!r}")
    return int(top_k)
