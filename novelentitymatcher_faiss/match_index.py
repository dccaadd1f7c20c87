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
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .arrays import advise_random, load_array
from .artifact import (
    INDEX_FILE,
    MODEL_DIR,
    ROW_ENTITY_FILE,
    STAGE_GRAPH_FILE,
    VECTORS_FILE,
    check_files,
    member,
    open_faiss_index,
    read_manifest,
)
from .calibration import CALIBRATION_VERSION, Calibration, add_confidence, resolve_threshold
from .columns import CORE_FIELDS, Columns
from .encoders import Encoder, load_encoder
from .errors import (
    ArtifactCorruptError,
    ArtifactIncompatibleError,
    FingerprintMismatchError,
    QueryError,
)
from .filters import Selection, make_selection, search_selected
from .lexical import LexicalSettings, featurize, lexical_vectors
from .normalize import NormalizerSettings, normalize_text
from .search import EarlyStop, best_per_entity, search
from .strings import StringTable

Result = dict[str, Any]
#: Flat searches of a layered artifact fetch this many rows beyond twice what they need,
#: so hidden rows can be dropped without a selector (see :meth:`MatchIndex._find`).
HIDDEN_SLACK = 16
#: Filters whose row masks an opened artifact keeps (the most recent ones).
SELECTION_CACHE = 8
#: Manifest fields every layer or shard must share (they decide how a query is encoded).
SHARED_FIELDS = (
    ("model", "fingerprint"),
    ("model", "dim"),
    ("normalizer",),
    ("lexical",),
    ("index_dim",),
    ("metric",),
    ("max_text_chars",),
)
_MODEL_FIELDS: dict[str, Any] = {
    "name": str,
    "backend": str,
    "fingerprint": str,
    "native_dim": int,
    "dim": int,
    "bundled": bool,
}
_INDEX_FIELDS: dict[str, Any] = {
    "type": str,
    "faiss_class": str,
    "nprobe": (int, type(None)),
    "rerank": int,
}


def _expect(section: dict[str, Any], key: str, kind: Any, where: str) -> None:
    """Raise :class:`ArtifactCorruptError` unless ``section[key]`` has type ``kind``."""
    value = section.get(key) if isinstance(section, dict) else None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ArtifactCorruptError(f"{where}.{key} is missing or not {kind}; rebuild the artifact")


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
    check_files(path, manifest, full=verify == "full")
    return MatchIndex(path, manifest, mmap=mmap, encoder=encoder)


class MatchIndex:
    """An opened, read-only artifact. Thread-safe for concurrent ``match`` calls."""

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        *,
        mmap: bool = True,
        encoder: Encoder | None = None,
    ) -> None:
        self.path = Path(path)
        self.manifest = manifest
        where = f"{path / 'manifest.json'}"
        try:
            model, counts, info = manifest["model"], manifest["counts"], manifest["index"]
            for key, kind in _MODEL_FIELDS.items():
                _expect(model, key, kind, f"{where}: model")
            for key in ("entities", "vectors", "max_vectors_per_entity"):
                _expect(counts, key, int, f"{where}: counts")
            for key, kind in _INDEX_FIELDS.items():
                _expect(info, key, kind, f"{where}: index")
            self.model_dim = model["dim"]
            self.lexical = (
                LexicalSettings.from_dict(manifest["lexical"]) if manifest.get("lexical") else None
            )
            self.dim = self.model_dim + (self.lexical.width if self.lexical else 0)
            self.n_entities = counts["entities"]
            self.n_vectors = counts["vectors"]
            self._fetch_per_entity = max(1, counts["max_vectors_per_entity"])
            # the stored search breadth: IVF nprobe, or an HNSW index's efSearch
            self.nprobe = info["nprobe"] if info.get("ef_search") is None else info["ef_search"]
            self._rerank = info["rerank"]
            self.spill = int(info.get("spill", 1))  # lists each vector is filed under
            stop = info.get("early_stop")  # absent in artifacts of earlier versions
            self.early_stop = None if stop is None else EarlyStop.from_dict(stop)
            self.normalizer = NormalizerSettings.from_dict(manifest["normalizer"])
            self._max_chars = int(manifest.get("max_text_chars", 2048))
            self.columns = Columns(self.path, manifest.get("columns"), self.n_entities)
            section = manifest.get("calibration")  # absent in artifacts of earlier versions
            if section is not None and section.get("version") != CALIBRATION_VERSION:
                raise ArtifactIncompatibleError(
                    f"{where}: confidence model version {section.get('version')!r}; this "
                    f"library reads version {CALIBRATION_VERSION}: rebuild the artifact with "
                    "it, or use the library version that wrote it"
                )
            self.calibration = None if section is None else Calibration.from_dict(section)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactCorruptError(f"{where}: malformed field ({exc!r})") from None
        if (
            self.nprobe is not None and (not isinstance(self.nprobe, int) or self.nprobe < 1)
            or self._max_chars < 1
            or self.spill < 1
        ):
            raise ArtifactCorruptError(
                f"{where}: nprobe, ef_search, spill and max_text_chars must be positive"
            )
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
        self._check_consistency(info)
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
        if manifest.get("layers"):
            self._open_layers(manifest["layers"], mmap)

    def _check_consistency(self, info: dict[str, Any]) -> None:
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
        if type(self.index).__name__ != info.get("faiss_class"):
            problems.append(
                f"index type {type(self.index).__name__}, manifest says {info.get('faiss_class')}"
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

    def _open_layers(self, info: dict[str, Any], mmap: bool) -> None:
        """Open the ``layer-NNN/`` sub-artifacts and apply every segment's hidden mask."""
        where = self.path / "manifest.json"
        try:
            segments = list(info["segments"])
            masks = [info.get("hidden"), *(entry.get("hidden") for entry in segments)]
            folders = [member(self.path, entry["dir"]) for entry in segments]
        except (KeyError, TypeError, AttributeError) as exc:
            raise ArtifactCorruptError(f"{where}: malformed layers field ({exc!r})") from None
        for folder in folders:
            layer = MatchIndex(folder, read_manifest(folder), mmap=mmap)
            check_compatible(self, layer)
            self.layers.append(layer)
        for segment, name in zip([self, *self.layers], masks, strict=True):
            if name is not None:
                segment._hide(load_array(member(self.path, name), np.bool_, ndim=1))
        if info.get("entities") != len(self):
            raise ArtifactCorruptError(
                f"{where}: layers hold {len(self)} visible entities, the manifest says "
                f"{info.get('entities')}; rebuild the artifact"
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
            expected = self.manifest["model"]["fingerprint"]
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
        model = self.manifest["model"]
        dim = None if model["dim"] == model["native_dim"] else int(model["dim"])
        source = str(member(self.path, MODEL_DIR)) if model.get("bundled") else model["name"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # truncation warnings were given at build time
            return load_encoder(source, embedding_dim=dim, show_progress=False)

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
    ) -> Result | list[Result] | None | list[Result | None] | list[list[Result]]:
        """Match one text or a list of texts.

        A str with ``top_k=1`` gives a dict ``{"id", "score", "text"}`` or None; ``top_k>1``
        a list of dicts (best first, one per entity). A list gives a list of those.
        ``threshold=None`` (the default) keeps every hit, ranked by ``score``. On a
        calibrated artifact (:mod:`.calibration`) any other ``threshold`` adds
        ``"confidence"``, the probability that the hit is the right entity, and applies to
        it: ``"auto"`` drops hits under ``DEFAULT_THRESHOLD`` (0.4), so a text with no likely
        entity gets None (what :class:`~novelentitymatcher_faiss.Matcher` does by default);
        0 adds confidence and drops nothing. Without a calibration a number applies to
        ``score`` and ``"auto"`` keeps every hit. Texts that normalize to empty get no hit.
        ``None`` or non-string items raise :class:`QueryError`. ``nprobe`` overrides
        the stored search breadth for this call: IVF lists probed, or an HNSW index's efSearch.

        ``explain=True`` with confidence keeps the hits under the cut, marked: every hit
        has ``"accepted"``, and the top hit ``"is_novel"`` (True where ``match`` without
        ``explain`` answers None) and ``"reason"``. It also adds ``"dense"`` and
        ``"lexical"`` cosines and the ``"weight"`` of
        the lexical part to each hit; ``score == (1 - weight) * dense + weight * lexical``.

        ``where`` ({column: condition}, see :meth:`Columns.mask`) and ``candidates``
        (entity ids) restrict the search to the entities that meet every condition, inside
        the FAISS search (:mod:`.filters`); ``metadata=True`` adds each hit's
        ``"metadata"`` (the entity's fields other than id, name and aliases).
        """
        selection = make_selection(where, candidates)
        return self._match(texts, top_k, threshold, nprobe, batch_size, explain, self._search,
                           selection, self if metadata else None, self.calibration)  # fmt: skip

    def _match(
        self,
        texts: str | Sequence[str],
        top_k: int,
        threshold: float | str | None,
        nprobe: int | None,
        batch_size: int,
        explain: bool,
        search_fn: SearchFn,
        selection: Selection | None = None,
        records: Any = None,
        calibration: Calibration | None = None,
    ) -> Result | list[Result] | None | list[Result | None] | list[list[Result]]:
        """:meth:`match` with the search step given: normalize, encode, ``search_fn``
        (given ``selection``), with ``calibration`` and a ``threshold`` add confidence
        (searching at least the top 3: the top hit's margin and spread need them) and cut on it,
        shape;
        ``records`` (something with ``get(id)``): add each hit's metadata from it."""
        single = isinstance(texts, str)
        queries = [texts] if single else as_query_list(texts)
        top_k = check_top_k(top_k)
        cut = resolve_threshold(threshold, calibration is not None, None)
        if threshold is None:  # raw hits: no confidence, the top-1 search stays top-1
            calibration = None
        search_k = top_k if calibration is None else max(top_k, 3)
        out: list[list[Result]] = []
        for start in range(0, len(queries), batch_size):
            chunk = queries[start : start + batch_size]
            norm = [self._normalize(q, start + i) for i, q in enumerate(chunk)]
            keep = [i for i, q in enumerate(norm) if q]
            results: list[list[Result]] = [[] for _ in chunk]
            if keep:
                texts_in = [norm[i] for i in keep]
                vectors = featurize(texts_in, self.encoder, self.lexical, batch_size)
                if calibration is None:
                    found = search_fn(vectors, top_k, cut, nprobe, selection)
                else:
                    found = search_fn(vectors, search_k, None, nprobe, selection)
                    found = self._decide(calibration, texts_in, found, top_k, cut, explain)
                if explain:
                    self._explain(texts_in, found)
                for i, hits in zip(keep, found, strict=True):
                    results[i] = hits
            out.extend(results)
        if records is not None:
            add_metadata(out, records)
        shaped = [(hits[0] if hits else None) if top_k == 1 else hits for hits in out]
        return shaped[0] if single else shaped

    def _decide(
        self,
        calibration: Calibration,
        queries: list[str],
        found: list[list[Result]],
        top_k: int,
        cut: float | None,
        explain: bool = False,
    ) -> list[list[Result]]:
        """Add confidence to each query's hits, keep those at ``cut`` or above, best
        ``top_k``. With ``explain`` nothing is dropped: each hit says whether it is
        ``accepted``, and each query's top hit whether the query ``is_novel`` (no hit
        accepted), with the ``reason``."""
        add_confidence(calibration, queries, found, self.normalize_query)
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
                                 + (": no entity is likely" if top["is_novel"] else ""))
        return [hits[:top_k] for hits in found]

    def normalize_query(self, text: object, position: int = 0) -> str:
        """``text`` cut to ``max_text_chars`` and normalized as this artifact's queries are;
        QueryError naming ``position`` when it is not a string."""
        return self._normalize(text, position)

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
        array = np.asarray(queries, dtype=np.float32)
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise QueryError(
                f"query vectors must have shape (n, {self.dim}), got {np.shape(queries)}"
            )
        if not np.isfinite(array).all():
            raise QueryError("query vectors contain NaN or infinity")
        return self._search(array, check_top_k(top_k), threshold, nprobe)

    def _explain(self, queries: list[str], found: list[list[Result]]) -> None:
        """Add the dense and lexical cosines of every hit, re-encoding only the hit texts."""
        pairs = [
            (query, self._normalize(hit["text"], 0))
            for query, hits in zip(queries, found, strict=True)
            for hit in hits
        ]
        if not pairs:
            return
        left, right = [q for q, _ in pairs], [t for _, t in pairs]
        dense = np.einsum("nd,nd->n", self.encoder.encode(left), self.encoder.encode(right))
        lexical = np.full(len(pairs), np.nan)
        if self.lexical is not None:
            lexical = np.einsum(
                "nd,nd->n",
                lexical_vectors(left, self.lexical),
                lexical_vectors(right, self.lexical),
            )
        weight = self.lexical.weight if self.lexical else 0.0
        hits = [hit for row in found for hit in row]
        for hit, d, x in zip(hits, dense, lexical, strict=True):
            hit.update(dense=float(d), lexical=None if np.isnan(x) else float(x), weight=weight)

    def _normalize(self, text: object, position: int) -> str:
        if not isinstance(text, str):
            raise QueryError(
                f"query {position}: expected a string, got {type(text).__name__} {text!r:.40}"
            )
        return normalize_text(text[: self._max_chars], self.normalizer)

    def _search(
        self,
        vectors: np.ndarray,
        top_k: int,
        threshold: float | None,
        nprobe: int | None,
        selection: Selection | None = None,
    ) -> list[list[Result]]:
        if nprobe is not None and (not isinstance(nprobe, int) or nprobe < 1):
            raise QueryError(f"nprobe must be a positive int, got {nprobe!r}")
        if selection is not None:
            check_selection(self, selection)
        return self._search_parts(vectors, top_k, threshold, nprobe, selection)

    def _search_parts(
        self,
        vectors: np.ndarray,
        top_k: int,
        threshold: float | None,
        nprobe: int | None,
        selection: Selection | None,
    ) -> list[list[Result]]:
        """:meth:`_search` with ``selection`` already checked (by a shard set): this
        artifact's own index and its layers, merged."""
        found = self._search_own(vectors, top_k, threshold, nprobe, selection)
        if not self.layers:
            return found
        per_layer = [layer._search_own(vectors, top_k, threshold, nprobe, selection)
                     for layer in self.layers]  # fmt: skip
        return merge_hits([found, *per_layer], top_k)

    def _search_own(
        self,
        vectors: np.ndarray,
        top_k: int,
        threshold: float | None,
        nprobe: int | None,
        selection: Selection | None = None,
    ) -> list[list[Result]]:
        """:meth:`_search` over this artifact's own index, hidden entities excluded."""
        if selection is not None:
            entities, rows_selected = self.selected_rows(selection)
            visible = int(entities.sum())
        else:
            visible = self._visible
        if not visible:
            return [[] for _ in vectors]
        top_k = min(top_k, visible)
        fetch = min(self.n_vectors, (top_k - 1) * self._fetch_per_entity + 1)
        if selection is not None:
            scores, rows = search_selected(
                self.index, vectors, fetch, rows_selected, nprobe=nprobe or self.nprobe,
                vectors=self.vectors, rerank=self._rerank, spill=self.spill,
            )  # fmt: skip
        else:
            early = self.early_stop if nprobe is None else None  # a caller's nprobe is exact
            scores, rows = self._find(vectors, fetch, nprobe or self.nprobe, early)
        scores, rows, entities = best_per_entity(scores, rows, self.row_entity, top_k)
        np.minimum(scores, 1.0, out=scores)  # float rounding can put a cosine at 1.0000001
        np.maximum(scores, -1.0, out=scores)
        if threshold is not None:
            entities = np.where(scores >= threshold, entities, -1)
        return self._hits(scores, rows, entities)

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

    def _hits(
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
        info = self.manifest["index"]
        layers = f", layers={len(self.layers)}" if self.layers else ""
        return (
            f"MatchIndex({str(self.path)!r}, entities={len(self)}, vectors={self.n_vectors}, "
            f"model={self.manifest['model']['name']!r}, dim={self.dim}, index={info['type']!r}"
            f"{layers})"
        )


SearchFn = Callable[
    [np.ndarray, int, float | None, int | None, Selection | None], list[list[Result]]
]


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


def _field(manifest: dict[str, Any], keys: tuple[str, ...]) -> Any:
    value: Any = manifest
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def check_compatible(first: MatchIndex, other: MatchIndex) -> None:
    """Raise :class:`ArtifactIncompatibleError` unless ``other`` encodes queries like
    ``first`` (same :data:`SHARED_FIELDS`)."""
    for keys in SHARED_FIELDS:
        mine, theirs = _field(first.manifest, keys), _field(other.manifest, keys)
        if mine != theirs:
            raise ArtifactIncompatibleError(
                f"{other.path}: {'.'.join(keys)} is {theirs!r}, but {first.path} has "
                f"{mine!r}; shards and layers must be built with the same model and settings"
            )


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
