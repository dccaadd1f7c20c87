"""Query path: open an artifact (memory-mapped, checked) and match texts against it.

Per query batch: normalize, encode once, one FAISS ``search``, vectorized best-alias-per-
entity, threshold, then result dicts in upstream's shape ``{"id", "score", "text"}``.

An updated artifact may be layered (see :mod:`.update`): its own files are the parent's
(hard links), entities removed since are hidden by a mask (a FAISS ``IDSelectorBitmap`` at
search time), and added entities live in ``layer-NNN/`` sub-artifacts searched alongside;
the per-layer top-k are merged.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact.arrays import advise_random, load_array
from ..artifact.columns import Columns
from ..artifact.files import (
    INDEX_FILE,
    MANIFEST,
    MODEL_DIR,
    ROW_ENTITY_FILE,
    STAGE_GRAPH_FILE,
    VECTORS_FILE,
    check_files,
    member,
    open_faiss_index,
)
from ..artifact.manifest import Layers, Manifest, read_manifest
from ..artifact.strings import StringTable
from ..errors import (
    ArtifactCorruptError,
    ArtifactIncompatibleError,
    FingerprintMismatchError,
    QueryError,
)
from ..index.search import EarlyStop, best_per_entity, search
from ..models.encoders import Encoder, load_encoder
from ..text.normalize import normalize_text
from .filters import Selection, search_selected
from .protocol import Matchable, Result, Search, check_selection, merge_hits

#: Flat searches of a layered artifact fetch this many rows beyond twice what they need,
#: so hidden rows can be dropped without a selector (see :meth:`MatchIndex._find`).
HIDDEN_SLACK = 16
#: Filters whose row masks an opened artifact keeps (the most recent ones).
SELECTION_CACHE = 8
VERIFY_MODES = ("fast", "full")


def load_index(
    path: str | Path, *, mmap: bool = True, verify: str = "fast", encoder: Encoder | None = None
) -> MatchIndex:
    """Open an artifact directory; the encoder loads lazily at the first text query.

    ``verify="fast"`` checks the manifest, file sizes and FAISS compatibility (and every
    sha256 when the artifact is at most 32 MiB); ``"full"`` always checks every sha256.
    ``mmap=True`` maps the index with ``IO_FLAG_MMAP_IFC | IO_FLAG_READ_ONLY`` so no vectors
    are read into RAM.
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    path = Path(path)
    manifest = read_manifest(path)
    check_files(path, manifest.files, full=verify == "full")
    return MatchIndex(path, manifest, mmap=mmap, encoder=encoder)


class MatchIndex(Matchable):
    """An opened, read-only artifact. Thread-safe for concurrent ``match`` calls."""

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        *,
        mmap: bool = True,
        encoder: Encoder | None = None,
    ) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.model_dim = manifest.model.dim
        try:  # word weights, when the artifact has them, are read and checked here
            self.lexical = None if manifest.lexical is None else manifest.lexical.with_words(path)
        except (OSError, ValueError) as exc:
            raise ArtifactCorruptError(f"{path}: lexical word weights: {exc}") from None
        self.dim = self.model_dim + (self.lexical.width if self.lexical else 0)
        self.n_entities = manifest.counts.entities
        self.n_vectors = manifest.counts.vectors
        self._fetch_per_entity = max(1, manifest.counts.max_vectors_per_entity)
        #: the stored search breadth: IVF nprobe, or an HNSW index's efSearch
        self.breadth = manifest.index.breadth
        self._rerank = manifest.index.rerank
        self.spill = manifest.index.spill  # lists each vector is filed under
        self.early_stop = manifest.index.early_stop
        self.normalizer = manifest.normalizer
        self._max_chars = manifest.max_text_chars
        self.columns = Columns(self.path, manifest.columns, self.n_entities)
        self.calibration = manifest.calibration
        self.index = open_faiss_index(member(self.path, INDEX_FILE), mmap=mmap)
        self.row_entity = load_array(
            member(self.path, ROW_ENTITY_FILE), np.int64, ndim=1, mmap=mmap
        )
        self.texts = StringTable(self.path, "texts")
        self.ids = StringTable(self.path, "ids")
        self.records = StringTable(self.path, "entities", ext=".jsonl")
        vectors_path = self.path / VECTORS_FILE
        self.vectors = (
            load_array(vectors_path, np.float32, ndim=2) if vectors_path.exists() else None
        )
        if self.vectors is not None:
            advise_random(self.vectors)  # re-rank reads a few scattered rows per query
        self._check_consistency()
        self.stage_quantizer = self._open_stage_graph()
        self._encoder = encoder
        self._encoder_checked = False
        self._lock = threading.Lock()
        self._id_to_row: dict[str, int] | None = None
        self._hidden: np.ndarray | None = None  # bool (n_entities,): removed since the build
        self._selector: Any = None  # IDSelectorBitmap of the visible vector rows
        self._visible_rows: np.ndarray | None = None  # bool (n_vectors,)
        self._visible = self.n_entities
        self._selections: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # key -> masks
        self.layers: list[MatchIndex] = []
        if manifest.layers is not None:
            self._open_layers(manifest.layers, mmap)

    def _check_consistency(self) -> None:
        where = self.path / "manifest.json"
        problems = []
        if self.index.ntotal != self.n_vectors * self.spill:
            problems.append(
                f"index holds {self.index.ntotal} vectors, manifest says {self.n_vectors}"
                + (f" x spill {self.spill}" if self.spill > 1 else "")
            )
        if self.index.d != self.dim:
            problems.append(f"index dimension {self.index.d}, manifest says {self.dim}")
        if self.index.metric_type != 0:  # faiss.METRIC_INNER_PRODUCT
            problems.append("index metric is not inner product")
        if type(self.index).__name__ != self.manifest.index.faiss_class:
            problems.append(
                f"index type {type(self.index).__name__}, manifest says "
                f"{self.manifest.index.faiss_class}"
            )
        if len(self.row_entity) != self.n_vectors or len(self.texts) != self.n_vectors:
            problems.append("row map or texts do not have one row per vector")
        if len(self.ids) != self.n_entities or len(self.records) != self.n_entities:
            problems.append("ids or entities do not have one row per entity")
        if len(self.row_entity) and not (
            int(self.row_entity.min()) >= 0 and int(self.row_entity.max()) < self.n_entities
        ):
            problems.append("row map points outside the entity table")
        if self.vectors is not None and self.vectors.shape != (self.n_vectors, self.dim):
            problems.append(f"vectors.npy shape {self.vectors.shape} does not match the counts")
        if problems:
            raise ArtifactCorruptError(
                f"{where}: " + "; ".join(problems) + "; rebuild the artifact"
            )

    def _open_stage_graph(self) -> Any:
        """The early-stop stages' HNSW graph over the IVF centroids (read into RAM: nlist
        x d float32 plus the links), or None when the stages use the flat quantizer."""
        import faiss

        if self.early_stop is None or not self.early_stop.graph_ef_search:
            return None
        where = self.path / "manifest.json"
        if not isinstance(self.index, faiss.IndexIVF):
            raise ArtifactCorruptError(f"{where}: early_stop has a stage graph, the index no lists")
        graph = open_faiss_index(member(self.path, STAGE_GRAPH_FILE), mmap=False)
        if (
            not isinstance(graph, faiss.IndexHNSW)
            or graph.ntotal != self.index.nlist
            or graph.d != self.index.d
            or graph.metric_type != self.index.metric_type
        ):
            raise ArtifactCorruptError(
                f"{where}: {STAGE_GRAPH_FILE} is not an HNSW graph of the index's "
                f"{self.index.nlist} centroids of {self.index.d}-d; rebuild the artifact"
            )
        graph.hnsw.efSearch = self.early_stop.graph_ef_search
        return graph

    def _open_layers(self, layers: Layers, mmap: bool) -> None:
        """Open the ``layer-NNN/`` sub-artifacts and apply every segment's hidden mask."""
        for folder, _ in layers.segments:
            path = member(self.path, folder)
            layer = MatchIndex(path, read_manifest(path), mmap=mmap)
            check_compatible(self, layer)
            self.layers.append(layer)
        for segment, name in zip([self, *self.layers], layers.masks, strict=True):
            if name is not None:
                segment._hide(load_array(member(self.path, name), np.bool_, ndim=1))
        if layers.entities != len(self):
            raise ArtifactCorruptError(
                f"{self.path / MANIFEST}: layers hold {len(self)} visible entities, the "
                f"manifest says {layers.entities}; rebuild the artifact"
            )

    def hidden_mask(self) -> np.ndarray:
        """A copy of the bool (n_entities,) mask of this index's entities hidden by updates
        (all False for an artifact without layers)."""
        if self._hidden is None:
            return np.zeros(self.n_entities, dtype=bool)
        return self._hidden.copy()

    def _hide(self, hidden: np.ndarray) -> None:
        """Hide the entities where ``hidden`` (bool (n_entities,)) is set from every query."""
        import faiss

        if hidden.shape != (self.n_entities,):
            raise ArtifactCorruptError(
                f"{self.path}: hidden-entity mask of shape {hidden.shape} for "
                f"{self.n_entities} entities; rebuild the artifact"
            )
        self._hidden = np.array(hidden, dtype=bool)
        self._selections.clear()
        self._visible = self.n_entities - int(self._hidden.sum())
        self._visible_rows = ~self._hidden[np.asarray(self.row_entity)]
        self._bitmap = np.packbits(self._visible_rows, bitorder="little")  # FAISS's bit order
        self._selector = faiss.IDSelectorBitmap(self.n_vectors, faiss.swig_ptr(self._bitmap))

    # -- encoder -----------------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        """The query encoder, loaded at first use; its fingerprint must match the manifest."""
        if self._encoder_checked:
            return self._encoder
        with self._lock:
            if self._encoder is None:
                self._encoder = self._load_encoder()
            expected = self.manifest.model.fingerprint
            if self._encoder.fingerprint != expected or self._encoder.dim != self.model_dim:
                raise FingerprintMismatchError(
                    f"{self.path}: the query encoder ({self._encoder.model_name}, fingerprint "
                    f"{self._encoder.fingerprint[:12]}, dim {self._encoder.dim}) is not the model "
                    f"this index was built with (fingerprint {expected[:12]}, "
                    f"dim {self.model_dim}); "
                    "use the same model files or rebuild the index"
                )
            self._encoder_checked = True
        return self._encoder

    def _load_encoder(self) -> Encoder:
        model = self.manifest.model
        dim = None if model.dim == model.native_dim else model.dim
        source = str(member(self.path, MODEL_DIR)) if model.bundled else model.name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # truncation warnings were given at build time
            return load_encoder(source, embedding_dim=dim, show_progress=False)

    @property
    def nprobe(self) -> int | None:
        """The stored IVF nprobe (None for flat and HNSW indexes)."""
        return self.manifest.index.nprobe

    @property
    def ef_search(self) -> int | None:
        """The stored efSearch of an HNSW index (None for others)."""
        return self.manifest.index.ef_search

    @property
    def max_text_chars(self) -> int:
        """Texts are cut to this many characters before normalizing (from the manifest)."""
        return self._max_chars

    # -- queries -----------------------------------------------------------------------
    def __len__(self) -> int:
        """Entities a query can return (those of every layer, hidden ones excluded)."""
        return self._visible + sum(len(layer) for layer in self.layers)

    def get(self, entity_id: str) -> dict[str, Any] | None:
        """The stored entity record (id, name, aliases, metadata) for ``entity_id``, or None."""
        row = self.row_of(entity_id)
        if row is not None:
            return self.entity(row)
        for layer in self.layers:
            found = layer.get(entity_id)
            if found is not None:
                return found
        return None

    def holds(self, entity_id: str) -> bool:
        """Whether ``entity_id`` is a visible entity of this artifact or a layer (no record
        read, unlike :meth:`get`)."""
        return self.row_of(entity_id) is not None or any(
            layer.holds(entity_id) for layer in self.layers
        )

    def row_of(self, entity_id: str) -> int | None:
        """The entity row of ``entity_id`` in this artifact's own files (not its layers), or
        None, also when hidden (the id map is built at first use)."""
        if self._id_to_row is None:
            with self._lock:
                if self._id_to_row is None:
                    self._id_to_row = {self.ids[i]: i for i in range(len(self.ids))}
        row = self._id_to_row.get(entity_id)
        if row is not None and self._hidden is not None and self._hidden[row]:
            return None
        return row

    def entity(self, row: int) -> dict[str, Any]:
        """The stored entity record at entity row ``row``."""
        try:
            return json.loads(self.records[row])
        except json.JSONDecodeError:
            raise ArtifactCorruptError(
                f"{self.path}/entities.jsonl: row {row} is not JSON"
            ) from None

    @property
    def front(self) -> MatchIndex:
        """The artifact that normalizes and encodes queries: this one."""
        return self

    def normalize_query(self, text: object, position: int = 0) -> str:
        """``text`` cut to ``max_text_chars`` and normalized as this artifact's queries are;
        QueryError naming ``position`` when it is not a string."""
        if not isinstance(text, str):
            raise QueryError(
                f"query {position}: expected a string, got {type(text).__name__} {text!r:.40}"
            )
        return normalize_text(text[: self._max_chars], self.normalizer)

    def search_encoded(self, vectors: np.ndarray, search: Search) -> list[list[Result]]:
        """:meth:`Matchable.search_encoded`: this artifact's index and its layers."""
        if search.selection is not None:
            check_selection(self, search.selection)
        return self.search_parts(vectors, search)

    def search_parts(self, vectors: np.ndarray, search: Search) -> list[list[Result]]:
        """:meth:`search_encoded` with the selection already checked (by a shard set): this
        artifact's own index and its layers, merged."""
        found = self._search_own(vectors, search)
        if not self.layers:
            return found
        per_layer = [layer._search_own(vectors, search) for layer in self.layers]
        return merge_hits([found, *per_layer], search.top_k)

    def _search_own(self, vectors: np.ndarray, search: Search) -> list[list[Result]]:
        """:meth:`search_encoded` over this artifact's own index, hidden entities excluded."""
        selection, nprobe = search.selection, search.nprobe
        if selection is not None:
            entities, rows_selected = self.selected_rows(selection)
            visible = int(entities.sum())
        else:
            visible = self._visible
        if not visible:
            return [[] for _ in vectors]
        top_k = min(search.top_k, visible)
        fetch = min(self.n_vectors, (top_k - 1) * self._fetch_per_entity + 1)
        if selection is not None:
            scores, rows = search_selected(
                self.index, vectors, fetch, rows_selected, nprobe=nprobe or self.breadth,
                vectors=self.vectors, rerank=self._rerank, spill=self.spill,
            )  # fmt: skip
        else:
            early = self.early_stop if nprobe is None else None  # a caller's nprobe is exact
            scores, rows = self._find(vectors, fetch, nprobe or self.breadth, early)
        scores, rows, entities = best_per_entity(scores, rows, self.row_entity, top_k)
        np.minimum(scores, 1.0, out=scores)  # float rounding can put a cosine at 1.0000001
        np.maximum(scores, -1.0, out=scores)
        if search.threshold is not None:
            entities = np.where(scores >= search.threshold, entities, -1)
        return self.hits(scores, rows, entities)

    def column_names(self) -> list[str]:
        """The metadata columns a ``where`` filter can name (this artifact's and its
        layers'), sorted."""
        names = set(self.columns.names())
        for layer in self.layers:
            names.update(layer.column_names())
        return sorted(names)

    def selected_rows(self, selection: Selection) -> tuple[np.ndarray, np.ndarray]:
        """(entities bool (n_entities,), vector rows bool (n_vectors,)) of this artifact's
        own files that ``selection`` keeps, hidden entities excluded; the last
        ``SELECTION_CACHE`` selections are kept."""
        cached = self._selections.get(selection.key)
        if cached is not None:
            return cached
        keep = ~self.hidden_mask()
        for name, condition in selection.where:
            keep &= self.columns.mask(name, condition)
        if selection.candidates is not None:
            wanted = np.zeros(self.n_entities, dtype=bool)
            rows = [self.row_of(entity_id) for entity_id in selection.candidates]
            wanted[[row for row in rows if row is not None]] = True
            keep &= wanted
        masks = (keep, keep[np.asarray(self.row_entity)])
        with self._lock:
            if len(self._selections) >= SELECTION_CACHE:
                self._selections.pop(next(iter(self._selections)))
            self._selections[selection.key] = masks
        return masks

    def selects_ids(self, selection: Selection, ids: Sequence[str]) -> np.ndarray:
        """bool (len(ids),): which of ``ids`` are visible entities that ``selection`` keeps
        (in this artifact's own files or a layer)."""
        out = np.zeros(len(ids), dtype=bool)
        for part in (self, *self.layers):
            kept = part.selected_rows(selection)[0]
            for i, entity_id in enumerate(ids):
                row = part.row_of(entity_id)
                out[i] |= row is not None and bool(kept[row])
        return out

    def hits(
        self, scores: np.ndarray, rows: np.ndarray, entities: np.ndarray
    ) -> list[list[Result]]:
        """Result dicts of (nq, k) scores, vector rows and entity rows; entity -1 is no hit."""
        if entities.size == 1:  # one query, top 1: plain item access
            row = int(entities[0, 0])
            if row < 0:
                return [[]]
            hit = {"id": self.ids[row], "score": float(scores[0, 0]),
                   "text": self.texts[int(rows[0, 0])]}  # fmt: skip
            return [[hit]]
        keep = entities >= 0
        found = np.count_nonzero(keep, axis=1).tolist()
        ids = iter(self.ids.take(entities[keep].tolist()))
        texts = iter(self.texts.take(rows[keep].tolist()))
        values = iter(scores[keep].tolist())
        return [
            [{"id": next(ids), "score": next(values), "text": next(texts)} for _ in range(n)]
            for n in found
        ]

    def _find(
        self, vectors: np.ndarray, fetch: int, nprobe: int | None, early: EarlyStop | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`search` for the top ``fetch`` visible rows, (nq, fetch) scores and rows;
        ``early``: staged probing (used when no entity is hidden).

        Hidden rows are excluded by the FAISS selector, except on flat indexes, where a
        selector takes FAISS off its BLAS path (about 10x slower): those fetch
        ``2 * fetch + HIDDEN_SLACK`` rows, drop hidden ones, and search again with the
        selector only the queries whose top rows were mostly hidden.
        """
        import faiss

        options = {
            "nprobe": nprobe, "vectors": self.vectors, "rerank": self._rerank, "spill": self.spill
        }
        if self._selector is None:
            return search(self.index, vectors, fetch, early=early,
                          stage_quantizer=self.stage_quantizer, **options)  # fmt: skip
        if not isinstance(self.index, faiss.IndexFlat):
            return search(self.index, vectors, fetch, selector=self._selector, **options)
        wide = min(self.n_vectors, 2 * fetch + HIDDEN_SLACK)
        scores, rows = search(self.index, vectors, wide, **options)
        keep = (rows >= 0) & self._visible_rows[np.maximum(rows, 0)]
        order = np.argsort(~keep, axis=1, kind="stable")[:, :fetch]  # visible first, in order
        kept = np.take_along_axis(keep, order, 1)
        scores = np.where(kept, np.take_along_axis(scores, order, 1), -np.inf)
        rows = np.where(kept, np.take_along_axis(rows, order, 1), -1)
        short = kept.sum(axis=1) < fetch if wide < self.n_vectors else []
        if np.any(short):
            again = search(self.index, vectors[short], fetch, selector=self._selector, **options)
            scores[short], rows[short] = again
        return scores.astype(np.float32), rows

    def __repr__(self) -> str:
        layers = f", layers={len(self.layers)}" if self.layers else ""
        return (
            f"MatchIndex({str(self.path)!r}, entities={len(self)}, vectors={self.n_vectors}, "
            f"model={self.manifest.model.name!r}, dim={self.dim}, "
            f"index={self.manifest.index.type!r}{layers})"
        )


def check_compatible(first: MatchIndex, other: MatchIndex) -> None:
    """Raise :class:`ArtifactIncompatibleError` unless ``other`` encodes queries like
    ``first`` (same :data:`~.manifest.QUERY_FIELDS`)."""
    mine, theirs = first.manifest.query_fields(), other.manifest.query_fields()
    for name in mine:
        if mine[name] != theirs[name]:
            raise ArtifactIncompatibleError(
                f"{other.path}: {name} is {theirs[name]!r}, but {first.path} has "
                f"{mine[name]!r}; shards and layers must be built with the same model and settings"
            )
