"""Distributed build on Ray: one trained coarse quantizer, shards built on the workers.

The driver reads the catalog, encodes a seeded sample and trains the FAISS index once
(IVF centroids, SQ/PQ codebooks). Ray Data splits the catalog into ``shards`` blocks; each
worker encodes its block and adds it to a copy of the trained empty index, writing one
ordinary artifact. The set is a folder of shard artifacts plus ``shards.json``; open it
with :func:`~.shards.load_shards`. Workers must see the output
folder (a shared filesystem on a real cluster) and reach a model source (the model cache
or the pinned wheels). Ray is the optional ``ray`` extra.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact.files import atomic_directory
from ..artifact.manifest import ShardSet
from ..models.encoders import load_encoder
from ..models.registry import DEFAULT_MODEL
from ..query.shards import ShardedIndex, load_shards
from ..text.lexical import featurize
from ..text.normalize import NormalizerSettings, normalize_text
from .build import resolve_lexical
from .catalog import MAX_TEXT_CHARS, read_catalog
from .indexing import check_index_type, choose_index, new_trained_index, training_sample_size


def build_with_ray(
    entities: Iterable[Mapping[str, Any]] | str | Path,
    out: str | Path,
    *,
    shards: int = 2,
    model: str = DEFAULT_MODEL,
    embedding_dim: int | None = None,
    index_type: str = "auto",
    nlist: int | None = None,
    nprobe: int | None = None,
    lexical: bool = True,
    normalize: bool = True,
    batch_size: int = 1024,
    overwrite: bool = False,
    seed: int = 0,
    show_progress: bool = True,
) -> ShardedIndex:
    """Build ``entities`` as ``shards`` artifacts on the running Ray cluster; open the set.

    Call ``ray.init(...)`` first (``ray.init()`` alone starts a local cluster; pass
    ``address="auto"`` on a cluster node). ``index_type`` and ``nlist`` are resolved for
    the whole catalog; nprobe is tuned per shard unless fixed. Returns the
    :class:`ShardedIndex` of the written folder.
    """
    import ray

    if not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards must be a positive int, got {shards!r}")
    check_index_type(index_type)
    started = time.perf_counter()
    rows = [dict(entity) for entity in read_catalog(entities)]
    encoder = load_encoder(model, embedding_dim=embedding_dim, show_progress=show_progress)
    kind, factory, n_list, trained = _trained_quantizer(
        rows, encoder, index_type, nlist, resolve_lexical(lexical),
        NormalizerSettings(bool(normalize)), seed, show_progress,
    )  # fmt: skip
    options = {"model": model, "embedding_dim": embedding_dim, "nlist": n_list or None,
               "index_type": kind if kind != "factory" else factory, "nprobe": nprobe,
               "lexical": lexical, "normalize": normalize, "batch_size": batch_size,
               "seed": seed}  # fmt: skip
    # each row travels as its catalog position (names the shard) and its entity as JSON,
    # so metadata of any shape survives Ray Data's columnar blocks unchanged
    items = [{"row": n, "entity": json.dumps(row, ensure_ascii=False)}
             for n, row in enumerate(rows)]  # fmt: skip
    with atomic_directory(Path(out), overwrite=overwrite) as tmp:
        dataset = ray.data.from_items(items).repartition(shards)
        written = dataset.map_batches(
            _build_shard,
            batch_size=None,
            batch_format="numpy",
            fn_kwargs={"folder": str(tmp), "trained": trained, "options": options},
        ).take_all()
        names = tuple(sorted(record["shard"] for record in written))
        seconds = round(time.perf_counter() - started, 3)
        listing = ShardSet(names, len(rows), options["index_type"], n_list or None,
                           f"ray {ray.__version__}", seconds)  # fmt: skip
        listing.write(tmp)
    return load_shards(Path(out))


def _trained_quantizer(
    rows: list[dict[str, Any]],
    encoder: Any,
    index_type: str,
    nlist: int | None,
    lexical: Any,
    settings: NormalizerSettings,
    seed: int,
    show_progress: bool,
) -> tuple[str, str, int, Any]:
    """The whole catalog's index kind, FAISS factory and nlist (:func:`choose_index`), and
    the empty index trained once for every shard, serialized (None when it needs no
    training)."""
    import faiss

    dim = encoder.dim + (lexical.width if lexical else 0)
    vectors_estimate = sum(1 + len(row["aliases"]) for row in rows)
    kind, factory, n_list = choose_index(index_type, vectors_estimate, dim, nlist)
    if not (n_list or kind == "factory"):
        return kind, factory, n_list, None
    sample = _sample_vectors(rows, factory, dim, encoder, lexical, settings, seed)
    return kind, factory, n_list, faiss.serialize_index(
        new_trained_index(factory, sample, seed, show_progress)
    )


def _sample_vectors(
    rows: list[dict[str, Any]],
    factory: str,
    dim: int,
    encoder: Any,
    lexical: Any,
    settings: NormalizerSettings,
    seed: int,
) -> np.ndarray:
    """Index vectors of a seeded sample of the catalog's texts, enough to train ``factory``.

    Texts are drawn in a seeded random order and normalized only until the sample is full.
    """
    texts = [text for row in rows for text in (row["name"], *row["aliases"])]
    wanted = training_sample_size(factory, dim)
    sample: list[str] = []
    for position in random.Random(seed).sample(range(len(texts)), len(texts)):
        norm = normalize_text(texts[position][:MAX_TEXT_CHARS], settings)
        if norm:
            sample.append(norm)
            if len(sample) == wanted:
                break
    return featurize(sample, encoder, lexical)


def _build_shard(
    batch: dict[str, np.ndarray], folder: str, trained: Any, options: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Ray Data task: build one shard artifact from a block of catalog rows."""
    import faiss

    from .build import build_index

    entities = [json.loads(text) for text in batch["entity"]]
    name = f"shard-{int(np.min(batch['row'])):09d}"
    index = None if trained is None else faiss.deserialize_index(np.asarray(trained))
    build_index(entities, Path(folder) / name, trained=index, show_progress=False, **options)
    return {"shard": np.array([name]), "entities": np.array([len(entities)])}
