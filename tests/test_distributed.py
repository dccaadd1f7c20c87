"""Distributed build on a real local Ray cluster (``ray.init(num_cpus=2)``) against the
single-process build, on real potion-8m and upstream's MCC catalog."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")  # the optional "ray" extra; `make test` installs it

from novelentitymatcher_faiss import (  # noqa: E402
    ArtifactExistsError,
    ArtifactIncompatibleError,
    build_index,
    load_shards,
)
from novelentitymatcher_faiss.artifact.manifest import SET_FILE  # noqa: E402
from novelentitymatcher_faiss.index.catalog import read_catalog  # noqa: E402
from novelentitymatcher_faiss.index.distributed import build_with_ray  # noqa: E402
from novelentitymatcher_faiss.text.perturb import one_letter_typo  # noqa: E402

PRODUCTS = Path(__file__).parent / "data" / "products_mcc.csv"


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)  # fmt: skip
    yield
    ray.shutdown()


def agreement(a, b, queries: list[str], nprobe: int | None = None) -> float:
    """Share of queries with the same top-1 entity, or an equal score (a tie); ``nprobe``
    (None: each index's stored breadth) applies to both."""
    same = [x is not None and y is not None and (x["id"] == y["id"] or
            abs(x["score"] - y["score"]) < 1e-5)
            for x, y in zip(a.match(queries, nprobe=nprobe), b.match(queries, nprobe=nprobe),
                            strict=True)]  # fmt: skip
    return sum(same) / len(same)


def test_ray_build_agrees_with_the_local_build(cluster, tmp_path):
    import random

    entities = list(read_catalog(PRODUCTS))
    rng = random.Random(3)
    queries = [one_letter_typo(e["name"], rng) for e in entities] + [e["name"] for e in entities]
    sharded = build_with_ray(PRODUCTS, tmp_path / "set", shards=3, index_type="ivf", nlist=16,
                             show_progress=False)  # fmt: skip
    local = build_index(PRODUCTS, tmp_path / "local", index_type="ivf", nlist=16,
                        show_progress=False)  # fmt: skip
    assert len(sharded.shards) == 3
    assert len(sharded) == len(local) == len(entities)
    # every shard was filled from the one trained quantizer
    centroids = {shard.index.quantizer.reconstruct_n(0, 16).tobytes() for shard in sharded.shards}
    assert len(centroids) == 1
    # probing all 16 lists both are exact: same top-1 up to ties; at the tuned nprobe each
    # is an IVF search that keeps the library's 0.98 top-1 agreement with exact search
    # (the two trained their own centroids, so they need not agree with each other more)
    exact = build_index(PRODUCTS, tmp_path / "flat", index_type="flat", show_progress=False)
    assert agreement(sharded, local, queries, nprobe=16) == 1.0
    assert agreement(sharded, exact, queries) >= 0.98
    assert agreement(local, exact, queries) >= 0.98
    listing = json.loads((tmp_path / "set" / SET_FILE).read_text(encoding="utf-8"))
    assert listing["entities"] == len(entities) and len(listing["shards"]) == 3
    reopened = load_shards(tmp_path / "set")
    assert reopened.match("airlines")["score"] == sharded.match("airlines")["score"]
    with pytest.raises(ArtifactExistsError):
        build_with_ray(PRODUCTS, tmp_path / "set", shards=2, show_progress=False)


def test_ray_flat_build_and_a_bad_shard_list(cluster, tmp_path):
    sharded = build_with_ray(PRODUCTS, tmp_path / "flat", shards=2, index_type="flat",
                             show_progress=False)  # fmt: skip
    local = build_index(PRODUCTS, tmp_path / "local", index_type="flat", show_progress=False)
    queries = [e["name"][:-1] for e in read_catalog(PRODUCTS)][::3]
    assert agreement(sharded, local, queries) == 1.0
    listing = tmp_path / "flat" / SET_FILE
    info = json.loads(listing.read_text(encoding="utf-8"))
    listing.write_text(json.dumps({**info, "format_version": 99}), encoding="utf-8")
    with pytest.raises(ArtifactIncompatibleError, match="version 99"):
        load_shards(tmp_path / "flat")
