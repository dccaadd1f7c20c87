"""The query side of a trained artifact: its classifier head and the scorers that use it.

``scorer_for`` picks what answers ``match`` on an opened artifact: the index itself, a
:class:`HybridScorer` (the index's candidates and the labelled entities, re-scored with the
head) or a :class:`HeadScorer` (the head alone). Answering a query imports nothing of the
training side (:mod:`.train`, SetFit, scikit-learn).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .artifact import MODEL_DIR
from .errors import NemFaissError
from .lexical import featurize

SCORERS = ("hybrid", "index", "head")
#: The hybrid scorer adds this weight times the head's probability to a labelled entity's
#: cosine.
HYBRID_WEIGHT = 0.5
#: File of the classifier head inside a bundled model folder (safetensors, no pickle).
HEAD_FILE = "classifier_head.safetensors"


@dataclass(frozen=True, eq=False)
class ClassifierHead:
    """A linear softmax classifier over the labelled entities, on the model's vectors.

    ``weight`` float32 (n_labels, dim), ``bias`` float32 (n_labels,), ``labels`` the entity
    id of each row.
    """

    labels: tuple[str, ...]
    weight: np.ndarray
    bias: np.ndarray

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """Softmax probabilities, float32 (n, n_labels), for float32 vectors (n, dim)."""
        logits = np.asarray(vectors, dtype=np.float32) @ self.weight.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        return logits

    def save(self, folder: Path) -> Path:
        """Write ``folder / HEAD_FILE`` (safetensors; labels in its metadata)."""
        from safetensors.numpy import save_file

        path = Path(folder) / HEAD_FILE
        save_file(
            # safetensors writes the raw buffer: it must be C-ordered (sklearn's is Fortran)
            {"weight": np.ascontiguousarray(self.weight), "bias": np.ascontiguousarray(self.bias)},
            str(path),
            metadata={"labels": json.dumps(list(self.labels), ensure_ascii=False)},
        )
        return path

    @classmethod
    def load(cls, path: Path) -> ClassifierHead:
        """Read a head written by :meth:`save`; :class:`NemFaissError` if it is malformed."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as handle:
                labels = tuple(json.loads((handle.metadata() or {})["labels"]))
                weight = np.array(handle.get_tensor("weight"), dtype=np.float32)
                bias = np.array(handle.get_tensor("bias"), dtype=np.float32)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise NemFaissError(f"{path}: not a valid classifier head ({exc})") from None
        if weight.ndim != 2 or bias.shape != (len(labels),) or len(weight) != len(labels):
            raise NemFaissError(f"{path}: head shapes {weight.shape}/{bias.shape} do not agree")
        return cls(labels, weight, bias)


def head_path(index: Any) -> Path:
    """Where an opened artifact keeps its classifier head: inside the bundled model folder
    (the body was trained), else at the artifact's root (head-only training: the body is the
    registry model the manifest names)."""
    bundled = index.manifest["model"].get("bundled")
    return index.path / MODEL_DIR / HEAD_FILE if bundled else index.path / HEAD_FILE


def load_head(index: Any) -> ClassifierHead:
    """The classifier head of an opened artifact (a ``MatchIndex``), see :func:`head_path`."""
    path = head_path(index)
    if "training" not in index.manifest or not path.is_file():
        raise NemFaissError(
            f"{index.path} has no classifier head: train it with mode 'head-only' or 'full' "
            "(nem-faiss train), or use scorer='index'"
        )
    return ClassifierHead.load(path)


def _check_head(index: Any, head: ClassifierHead) -> None:
    if index.model_dim != head.weight.shape[1]:
        raise NemFaissError(
            f"classifier head width {head.weight.shape[1]} != model dim {index.model_dim}"
        )


def scorer_for(index: Any, name: str | None = None) -> Any:
    """What answers ``match(texts, top_k, threshold, nprobe)`` for scorer ``name`` on an
    opened artifact: the index itself ("index"), a :class:`HybridScorer` or a
    :class:`HeadScorer`. ``None`` takes the artifact's ``default_scorer`` ("index" for
    untrained artifacts and shard sets)."""
    manifest = getattr(index, "manifest", None) or {}
    default = (manifest.get("training") or {}).get("default_scorer", "index")
    name = name or default
    if name not in SCORERS:
        raise NemFaissError(f"scorer {name!r} is not available; choose one of {SCORERS}")
    if name == "index":
        return index
    if not manifest:
        raise NemFaissError(f"scorer {name!r} needs one trained artifact, not a shard set")
    head = load_head(index)
    return HybridScorer(index, head) if name == "hybrid" else HeadScorer(index, head)


class HeadScorer:
    """Match texts with the classifier head instead of the index (labelled entities only).

    Results have the index's shape; ``score`` is the head's softmax probability and
    ``text`` the entity's name.
    """

    def __init__(self, index: Any, head: ClassifierHead) -> None:
        _check_head(index, head)
        self.index = index
        self.head = head
        self.names = [(index.get(label) or {"name": label})["name"] for label in head.labels]

    def match(
        self,
        texts: str | Sequence[str],
        top_k: int = 1,
        threshold: float | None = None,
        nprobe: int | None = None,
        where: Mapping[str, Any] | None = None,
        candidates: Iterable[str] | None = None,
        metadata: bool = False,
    ) -> Any:
        """Same shapes as :meth:`MatchIndex.match`: dict/None, or lists of them. ``nprobe``
        is accepted for a uniform call and unused: the head scores every label. ``where``
        and ``candidates`` keep the labels whose entity meets them."""
        from .filters import make_selection
        from .match_index import add_metadata, as_query_list, check_selection, check_top_k

        single = isinstance(texts, str)
        queries = [texts] if single else as_query_list(texts)
        selection = make_selection(where, candidates)
        allowed = np.ones(len(self.head.labels), dtype=bool)
        if selection is not None:
            check_selection(self.index, selection)
            allowed = self.index.selects_ids(selection, self.head.labels)
        top_k = min(check_top_k(top_k), max(1, int(allowed.sum())))
        norm = [self.index.normalize_query(text, i) for i, text in enumerate(queries)]
        keep = [i for i, text in enumerate(norm) if text]
        out: list[list[dict[str, Any]]] = [[] for _ in queries]
        if keep:
            probs = self.head.probabilities(self.index.encoder.encode([norm[i] for i in keep]))
            probs[:, ~allowed] = -np.inf
            order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
            for i, row, best in zip(keep, probs, order, strict=True):
                out[i] = [
                    {"id": self.head.labels[j], "score": float(row[j]), "text": self.names[j]}
                    for j in best
                    if allowed[j] and (threshold is None or row[j] >= threshold)
                ]
        if metadata:
            add_metadata(out, self.index)
        shaped = [(hits[0] if hits else None) if top_k == 1 else hits for hits in out]
        return shaped[0] if single else shaped


class HybridScorer:
    """The index's best entities and the labelled entities, scored with the classifier head.

    One encode and one index search per query, as with the index alone, plus one product
    with the vectors of the labelled entities. A labelled entity scores
    ``cosine + weight * p``, ``p`` the head's softmax probability of it and ``cosine`` its
    best text's index score, computed exactly for every labelled entity (so the head can
    bring one the index search did not return); any other entity keeps its index score.
    The index's best ``top_k`` suffice: an unlabelled entity below them is also below
    ``top_k`` entities that score at least as high here. ``score`` lies in
    [-1, 1 + weight]. Every entity stays reachable; the head adds what the examples say
    about the labelled ones. Labelled entities removed or replaced by an update get no bonus.
    """

    def __init__(self, index: Any, head: ClassifierHead, weight: float = HYBRID_WEIGHT) -> None:
        _check_head(index, head)
        self.index, self.head, self.weight = index, head, weight
        self._label_set = frozenset(head.labels)
        self._labelled: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def match(
        self,
        texts: str | Sequence[str],
        top_k: int = 1,
        threshold: float | None = None,
        nprobe: int | None = None,
        batch_size: int = 4096,
        where: Mapping[str, Any] | None = None,
        candidates: Iterable[str] | None = None,
        metadata: bool = False,
    ) -> Any:
        """Same shapes as :meth:`MatchIndex.match`: dict/None, or lists of them; ``where``
        and ``candidates`` filter the index search and the labelled entities alike."""
        from .filters import make_selection

        selection = make_selection(where, candidates)
        records = self.index if metadata else None
        return self.index._match(
            texts, top_k, threshold, nprobe, batch_size, False, self._search, selection, records
        )

    def labelled_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows int64 (r,), head column of each int64 (r,), index vectors float32 (r, dim))
        of the visible labelled entities' texts: stored vectors, else encoded once."""
        if self._labelled is None:
            index = self.index
            entities = np.array(
                [-1 if (row := index.row_of(label)) is None else row for label in self.head.labels]
            )
            order = np.argsort(entities)
            row_entity = np.asarray(index.row_entity)
            rows = np.flatnonzero(np.isin(row_entity, entities[entities >= 0]))
            if index._hidden is not None:
                rows = rows[~index._hidden[row_entity[rows]]]
            columns = order[np.searchsorted(entities[order], row_entity[rows])]
            if index.vectors is not None:
                vectors = np.asarray(index.vectors[rows], dtype=np.float32)
            else:
                texts = [index._normalize(index.texts[int(row)], 0) for row in rows]
                vectors = featurize(texts, index.encoder, index.lexical)
            self._labelled = rows, columns, vectors
        return self._labelled

    def _search(
        self,
        vectors: np.ndarray,
        top_k: int,
        threshold: float | None,
        nprobe: int | None,
        selection: Any = None,
    ) -> list[list[dict[str, Any]]]:
        """Search float32 (nq, dim) index vectors, re-rank, keep ``top_k`` over ``threshold``;
        ``selection`` (a :class:`~.filters.Selection`) filters both."""
        from .search import best_per_entity

        found = self.index._search(vectors, top_k, None, nprobe, selection)
        dense = vectors[:, : self.index.model_dim]
        if self.index.lexical is not None:  # undo the index's weighting of the dense part
            dense = dense / np.sqrt(1.0 - self.index.lexical.weight)
        probabilities = self.head.probabilities(dense)
        rows, columns, label_vectors = self.labelled_rows()
        if selection is not None:
            kept = self.index.selected_rows(selection)[1][rows]
            rows, columns, label_vectors = rows[kept], columns[kept], label_vectors[kept]
            if not len(rows):
                return [[h for h in hits if threshold is None or h["score"] >= threshold][:top_k]
                        for hits in found]  # fmt: skip
        scores = np.clip(vectors @ label_vectors.T, -1.0, 1.0)
        scores += self.weight * probabilities[:, columns]
        order = np.argsort(-scores, axis=1, kind="stable")
        labelled = self.index._hits(*best_per_entity(
            np.take_along_axis(scores, order, 1), rows[order], self.index.row_entity,
            min(top_k, len(self.head.labels)),
        ))  # fmt: skip
        out = []
        for hits, labelled_hits in zip(found, labelled, strict=True):
            merged = [hit for hit in hits if hit["id"] not in self._label_set] + labelled_hits
            merged.sort(key=lambda hit: -hit["score"])
            out.append([h for h in merged if threshold is None or h["score"] >= threshold][:top_k])
        return out
