"""The query side of a trained artifact: its classifier head and the scorers that use it.

``scorer_for`` picks what answers ``match`` on an opened artifact: the index itself, a
:class:`HybridScorer` (the index's candidates and the labelled entities, re-scored with the
head) or a :class:`HeadScorer` (the head alone). Answering a query imports nothing of the
training side (:mod:`.training`, SetFit, scikit-learn).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact.files import MODEL_DIR
from ..errors import NemFaissError
from ..index.search import best_per_entity
from ..text.lexical import featurize
from .protocol import Matchable, Search, check_selection

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
    bundled = index.manifest.model.bundled
    return index.path / MODEL_DIR / HEAD_FILE if bundled else index.path / HEAD_FILE


def load_head(index: Any) -> ClassifierHead:
    """The classifier head of an opened artifact (a ``MatchIndex``), see :func:`head_path`."""
    path = head_path(index)
    if index.manifest.training is None or not path.is_file():
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
    manifest = getattr(index, "manifest", None)  # a shard set has none
    name = name or (manifest.default_scorer if manifest is not None else "index")
    if name not in SCORERS:
        raise NemFaissError(f"scorer {name!r} is not available; choose one of {SCORERS}")
    if name == "index":
        return index
    if manifest is None:
        raise NemFaissError(f"scorer {name!r} needs one trained artifact, not a shard set")
    head = load_head(index)
    return HybridScorer(index, head) if name == "hybrid" else HeadScorer(index, head)


class HeadScorer(Matchable):
    """Match texts with the classifier head instead of the index (labelled entities only).

    Results have the index's shape; ``score`` is the head's softmax probability and
    ``text`` the entity's name. ``nprobe`` is unused: the head scores every label; ``where``
    and ``candidates`` keep the labels whose entity meets them.
    """

    def __init__(self, index: Any, head: ClassifierHead) -> None:
        _check_head(index, head)
        self.front = self.index = index
        self.head = head
        self.names = [(index.get(label) or {"name": label})["name"] for label in head.labels]

    def get(self, entity_id: str) -> dict[str, Any] | None:
        """The index's record of ``entity_id``, or None."""
        return self.index.get(entity_id)

    def encode_queries(self, texts: list[str], batch_size: int = 4096) -> np.ndarray:
        """The model's vectors of normalized ``texts``, float32 (n, model dim): what the
        head reads."""
        return self.index.encoder.encode(texts, batch_size=batch_size)

    def search_encoded(self, vectors: np.ndarray, search: Search) -> list[list[dict[str, Any]]]:
        """The labels of highest probability for model vectors float32 (nq, model dim)."""
        selection, threshold = search.selection, search.threshold
        allowed = np.ones(len(self.head.labels), dtype=bool)
        if selection is not None:
            check_selection(self.index, selection)
            allowed = self.index.selects_ids(selection, self.head.labels)
        top_k = min(search.top_k, max(1, int(allowed.sum())))
        probs = self.head.probabilities(vectors)
        probs[:, ~allowed] = -np.inf
        order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
        return [
            [{"id": self.head.labels[j], "score": float(row[j]), "text": self.names[j]}
             for j in best if allowed[j] and (threshold is None or row[j] >= threshold)]
            for row, best in zip(probs, order, strict=True)
        ]  # fmt: skip


class HybridScorer(Matchable):
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
        self.front = self.index = index
        self.head, self.weight = head, weight
        self._label_set = frozenset(head.labels)
        self._labelled: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def get(self, entity_id: str) -> dict[str, Any] | None:
        """The index's record of ``entity_id``, or None."""
        return self.index.get(entity_id)

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
            rows = rows[~index.hidden_mask()[row_entity[rows]]]
            columns = order[np.searchsorted(entities[order], row_entity[rows])]
            if index.vectors is not None:
                vectors = np.asarray(index.vectors[rows], dtype=np.float32)
            else:
                texts = [index.normalize_query(index.texts[int(row)]) for row in rows]
                vectors = featurize(texts, index.encoder, index.lexical)
            self._labelled = rows, columns, vectors
        return self._labelled

    def search_encoded(self, vectors: np.ndarray, search: Search) -> list[list[dict[str, Any]]]:
        """Search float32 (nq, dim) index vectors, re-rank, keep the best ``top_k`` at
        ``threshold`` or above; the selection filters both."""
        top_k, threshold, selection = search.top_k, search.threshold, search.selection
        found = self.index.search_encoded(vectors, replace(search, threshold=None))
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
        labelled = self.index.hits(*best_per_entity(
            np.take_along_axis(scores, order, 1), rows[order], self.index.row_entity,
            min(top_k, len(self.head.labels)),
        ))  # fmt: skip
        out = []
        for hits, labelled_hits in zip(found, labelled, strict=True):
            merged = [hit for hit in hits if hit["id"] not in self._label_set] + labelled_hits
            merged.sort(key=lambda hit: -hit["score"])
            out.append([h for h in merged if threshold is None or h["score"] >= threshold][:top_k])
        return out
