"""The systems this library is compared with, each set up on one catalog.

* upstream: its zero-shot method, reproduced faithfully (normalize, encode, sklearn
  ``cosine_similarity`` against every row, a full ``np.argsort`` per query, a per-query
  Python loop that keeps the best text per entity);
* vicinity (PyPI) with the same model and its ``basic`` (numpy) and ``faiss`` backends;
* the floor: a raw model2vec encode plus a raw FAISS search of a dense index of the same
  kind, with none of this library's work (no normalizer, no lexical channel, no result
  dicts);
* this library itself, any opened artifact (:func:`library`);
* string-similarity peers with no model, top-1 only: rapidfuzz ``WRatio``
  (:func:`rapidfuzz_top1`) and a char n-gram TF-IDF (:func:`char_tfidf`).

Every system exposes the same three calls: ``batch(texts)`` (its native bulk call, the one
timed), ``single(text)`` (one query), and ``top(texts, k)`` giving entity ids and scores of
the best ``k`` rows, (nq, k) arrays, for accuracy and recall. All dense systems share one
encoding of the catalog (:func:`encode_catalog`), so the model runs once per catalog.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Entity = dict[str, Any]
#: A string peer: queries -> (top-1 entity ids, scores float (q,), higher is closer).
Top1 = Callable[[list[str]], tuple[list[str], np.ndarray]]


@dataclass
class Catalog:
    """Every name and alias of a catalog, encoded once by the raw model.

    ``matrix`` float32 (n_texts, dim) as model2vec returns it (not normalized); ``owners``
    int64 (n_texts,) the entity row of each text.
    """

    model: Any
    ids: list[str]
    texts: list[str]
    owners: np.ndarray
    matrix: np.ndarray
    encode_s: float


@dataclass
class System:
    """One compared system, set up and ready to query."""

    name: str
    family: str
    setup_s: float
    batch: Callable[[list[str]], Any]
    single: Callable[[str], Any]
    top: Callable[[list[str], int], tuple[np.ndarray, np.ndarray]]
    exact: bool
    #: Sets the search breadth (an HNSW graph's efSearch) in place; None when fixed.
    set_breadth: Callable[[int], None] | None = None


def upstream_normalize(text: str) -> str:
    """Upstream's default normalizer: strip, NFKD, lowercase, collapse whitespace."""
    text = unicodedata.normalize("NFKD", text.strip()).lower()
    return " ".join(text.split())


def encode_catalog(rows: list[tuple[str, str, list[str]]], model_path: Path) -> Catalog:
    """Upstream's set-up: normalize every name and alias, encode them once with model2vec."""
    from model2vec import StaticModel

    model = StaticModel.from_pretrained(model_path)
    texts, owners = [], []
    for row, (_, name, aliases) in enumerate(rows):
        for text in (name, *aliases):
            texts.append(upstream_normalize(text))
            owners.append(row)
    started = time.perf_counter()
    matrix = model.encode(texts, batch_size=4096)
    return Catalog(
        model=model,
        ids=[entity_id for entity_id, _, _ in rows],
        texts=texts,
        owners=np.asarray(owners, dtype=np.int64),
        matrix=np.ascontiguousarray(matrix, dtype=np.float32),
        encode_s=time.perf_counter() - started,
    )


def _entity_ids(catalog: Catalog, rows: np.ndarray) -> np.ndarray:
    """Entity ids (object array) of text ``rows`` (-1 gives None)."""
    ids = np.asarray(catalog.ids, dtype=object)
    out = np.full(rows.shape, None, dtype=object)
    valid = rows >= 0
    out[valid] = ids[catalog.owners[rows[valid]]]
    return out


def _top_arrays(found: list[list[tuple[str, float]]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids object (nq, k), scores float32 (nq, k)) from per-query (id, score) lists, best
    first; missing hits are None / -inf."""
    ids = np.full((len(found), k), None, dtype=object)
    scores = np.full((len(found), k), -np.inf, dtype=np.float32)
    for i, hits in enumerate(found):
        for j, (hit_id, score) in enumerate(hits[:k]):
            ids[i, j], scores[i, j] = hit_id, score
    return ids, scores


def _top_of_results(found: list[Any], k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_top_arrays` of results in upstream's shape (a dict or None per query when
    ``k == 1``, else a list of dicts), which this library's ``match`` shares."""
    lists = [[hit] if hit else [] for hit in found] if k == 1 else found
    return _top_arrays([[(h["id"], h["score"]) for h in hits] for hits in lists], k)


def library(name: str, index: Any, exact: bool, setup_s: float = 0.0) -> System:
    """An opened artifact of this library (its ``match`` calls) as a :class:`System`."""
    return System(name=name, family="ours", setup_s=setup_s, batch=index.match,
                  single=index.match, exact=exact,
                  top=lambda texts, k: _top_of_results(index.match(texts, top_k=k), k))  # fmt: skip


# ------------------------------------------------------------------------------ upstream


def upstream_match(catalog: Catalog, queries: list[str], top_k: int = 1) -> list[Any]:
    """Upstream's zero-shot query path for one batch (see the module docstring)."""
    from sklearn.metrics.pairwise import cosine_similarity

    vectors = catalog.model.encode([upstream_normalize(q) for q in queries])
    similarities = cosine_similarity(vectors, catalog.matrix)
    ids, texts, owners = catalog.ids, catalog.texts, catalog.owners
    results: list[Any] = []
    for row in similarities:
        order = np.argsort(row)[::-1]
        hits, seen = [], set()
        for j in order:
            owner = int(owners[j])
            if owner in seen:
                continue
            seen.add(owner)
            hits.append({"id": ids[owner], "score": float(row[j]), "text": texts[j]})
            if len(hits) == top_k:
                break
        results.append((hits[0] if hits else None) if top_k == 1 else hits)
    return results


def upstream(catalog: Catalog) -> System:
    """Upstream's method; its set-up is the catalog encode."""

    return System(
        name="upstream (zero-shot)",
        family="upstream",
        setup_s=catalog.encode_s,
        batch=lambda texts: upstream_match(catalog, texts),
        single=lambda text: upstream_match(catalog, [text]),
        top=lambda texts, k: _top_of_results(upstream_match(catalog, texts, top_k=k), k),
        exact=True,
    )


# ------------------------------------------------------------------------------ vicinity


def vicinity(catalog: Catalog, backend: str, **options: Any) -> System:
    """vicinity's ``Vicinity`` over the catalog vectors, cosine metric, items = entity ids.

    Queries are encoded with the same model (raw texts, as a vicinity user would) and passed
    to ``Vicinity.query``; ``options`` go to the backend (e.g. ``index_type="hnsw"``).
    """
    from vicinity import Vicinity

    items = [catalog.ids[int(owner)] for owner in catalog.owners]
    started = time.perf_counter()
    vic = Vicinity.from_vectors_and_items(
        catalog.matrix, items, backend_type=backend, metric="cosine", **options
    )
    setup_s = time.perf_counter() - started
    model = catalog.model

    def query(texts: list[str], k: int = 1) -> list[list[tuple[str, float]]]:
        return vic.query(model.encode(texts), k=k)

    def top(texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        found = query(texts, k)
        return _top_arrays([[(item, 1.0 - float(distance)) for item, distance in hits[:k]]
                            for hits in found], k)  # fmt: skip

    def set_breadth(ef_search: int) -> None:
        vic.backend.index.hnsw.efSearch = ef_search

    label = backend + (f" {options['index_type']}" if "index_type" in options else "")
    hnsw = backend == "faiss" and options.get("index_type") == "hnsw"
    return System(
        name=f"vicinity {label}",
        family="vicinity",
        setup_s=setup_s,
        batch=query,
        single=lambda text: query([text]),
        top=top,
        exact=options.get("index_type", "flat") == "flat",
        set_breadth=set_breadth if hnsw else None,
    )


# ------------------------------------------------------------------------------ floor


def floor(catalog: Catalog, nlist: int | None = None, nprobe: int | None = None) -> System:
    """Raw model2vec encode + raw FAISS inner-product search over the normalized vectors.

    Flat when ``nlist`` is None, else ``IVF{nlist},Flat`` searched at ``nprobe``. Single
    queries run on one OpenMP thread, batches on all, as the library does.
    """
    import faiss

    vectors = catalog.matrix.copy()
    faiss.normalize_L2(vectors)
    dim = vectors.shape[1]
    started = time.perf_counter()
    if nlist is None:
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).permutation(len(vectors))[: 64 * nlist]
        index.train(vectors[np.sort(sample)])
        index.nprobe = int(nprobe or 1)
    index.add(vectors)
    setup_s = time.perf_counter() - started
    del vectors
    model = catalog.model
    threads = faiss.omp_get_max_threads()

    def batch(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        query = model.encode(texts)
        faiss.normalize_L2(query)
        return index.search(query, 1)

    def single(text: str) -> tuple[np.ndarray, np.ndarray]:
        query = model.encode([text])
        faiss.normalize_L2(query)
        faiss.omp_set_num_threads(1)
        try:
            return index.search(query, 1)
        finally:
            faiss.omp_set_num_threads(threads)

    def top(texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        query = model.encode(texts)
        faiss.normalize_L2(query)
        scores, rows = index.search(query, k)
        return _entity_ids(catalog, rows), scores

    name = "floor flat" if nlist is None else f"floor IVF{nlist} nprobe {nprobe}"
    return System(name=name, family="floor", setup_s=setup_s, batch=batch, single=single,
                  top=top, exact=nlist is None)  # fmt: skip


# ------------------------------------------------------------------------------ string peers


def entity_texts(entities: list[Entity]) -> tuple[list[str], list[str]]:
    """Every name and alias of ``{"id", "name", "aliases"?}`` entities, as written, and the
    entity id of each."""
    texts, owners = [], []
    for entity in entities:
        for text in (entity["name"], *entity.get("aliases", [])):
            texts.append(text)
            owners.append(entity["id"])
    return texts, owners


def char_tfidf(kept: list[Entity]) -> Top1:
    """A char 2-4-gram TF-IDF (smoothed idf, l2 rows) over every name and alias:
    queries -> (top-1 entity ids, cosines float (q,))."""
    from scipy import sparse

    texts, owners = entity_texts(kept)
    vocab: dict[str, int] = {}

    def grams(text: str) -> list[str]:
        padded = f" {' '.join(text.casefold().split())} "
        return [padded[i : i + n] for n in (2, 3, 4) for i in range(len(padded) - n + 1)]

    def matrix(items: list[str], grow: bool) -> Any:
        rows, cols = [], []
        for r, text in enumerate(items):
            for gram in grams(text):
                col = vocab.setdefault(gram, len(vocab)) if grow else vocab.get(gram)
                if col is not None:
                    rows.append(r)
                    cols.append(col)
        data = np.ones(len(rows), dtype=np.float32)
        return sparse.csr_matrix((data, (rows, cols)), shape=(len(items), len(vocab)))

    catalog = matrix(texts, True)
    df = np.bincount(catalog.indices, minlength=len(vocab))
    idf = np.log((1 + len(texts)) / (1 + df)) + 1

    def weigh(m: Any) -> Any:
        m = m @ sparse.diags(idf.astype(np.float32))
        norms = np.sqrt(m.multiply(m).sum(axis=1)).A.ravel()
        return sparse.diags(1 / np.maximum(norms, 1e-9)) @ m

    catalog = weigh(catalog).T.tocsr()

    def top1(queries: list[str]) -> tuple[list[str], np.ndarray]:
        scores = (weigh(matrix(queries, False)) @ catalog).toarray()
        best = scores.argmax(axis=1)
        return [owners[b] for b in best], scores[np.arange(len(queries)), best]

    return top1


def rapidfuzz_top1(kept: list[Entity]) -> Top1:
    """rapidfuzz ``WRatio`` (default processor: case-folded) over every name and alias."""
    from rapidfuzz import fuzz, process, utils

    texts, owners = entity_texts(kept)

    def top1(queries: list[str]) -> tuple[list[str], np.ndarray]:
        scores = process.cdist(queries, texts, scorer=fuzz.WRatio, processor=utils.default_process,
                               workers=2, dtype=np.uint8)  # fmt: skip
        best = scores.argmax(axis=1)
        return [owners[b] for b in best], scores[np.arange(len(queries)), best] / 100.0

    return top1
