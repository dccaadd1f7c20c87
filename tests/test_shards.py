"""Sharded artifacts: three real potion-8m shards of upstream's MCC catalog against one
artifact of the whole catalog."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from novelentitymatcher_faiss import (
    ArtifactIncompatibleError,
    QueryError,
    build_index,
    load_shards,
    update_index,
)
from novelentitymatcher_faiss.cli import main as cli_main
from novelentitymatcher_faiss.index.catalog import read_catalog

PRODUCTS = Path(__file__).parent / "data" / "products_mcc.csv"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("shards")
    entities = list(read_catalog(PRODUCTS))
    parts = [entities[i::3] for i in range(3)]  # interleaved: every shard covers all codes
    kinds = ["flat", "flat", "ivf"]
    shards = [build_index(part, root / f"shard{i}", index_type=kind, nlist=8, nprobe=8,
                          show_progress=False)
              for i, (part, kind) in enumerate(zip(parts, kinds, strict=True))]  # fmt: skip
    whole = build_index(entities, root / "whole", index_type="flat", show_progress=False)
    queries = [e["name"][:-1] for e in entities[::5]] + ["", "zzzz qqqq"]
    return {"root": root, "shards": shards, "whole": whole, "entities": entities,
            "queries": queries}  # fmt: skip


def test_shards_answer_like_one_artifact(built):
    sharded = load_shards([s.path for s in built["shards"]])
    whole = built["whole"]
    assert len(sharded) == len(whole) == len(built["entities"])
    ours = sharded.match(built["queries"], top_k=5)
    theirs = whole.match(built["queries"], top_k=5)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose([h["score"] for h in a], [h["score"] for h in b], atol=1e-5)
        assert len({h["id"] for h in a}) == len(a)  # one hit per entity
    # top-1 by id wherever the whole artifact's best is not tied
    for a, b in zip(ours, theirs, strict=True):
        if len(b) > 1 and b[0]["score"] - b[1]["score"] > 1e-4:
            assert a[0]["id"] == b[0]["id"]
    single = sharded.match(built["queries"][0])
    assert single["score"] == pytest.approx(whole.match(built["queries"][0])["score"], abs=1e-5)
    assert sharded.match("", top_k=3) == []
    hits = sharded.match(built["queries"][:20], threshold=0.9)  # on the first's confidence
    assert all(h is None or h["confidence"] >= 0.9 for h in hits)
    entity = built["entities"][7]
    assert sharded.get(entity["id"])["name"] == entity["name"]
    assert sharded.get("no-such-id") is None


def test_search_vectors_and_explain_over_shards(built):
    sharded = load_shards([s.path for s in built["shards"]])
    vectors = built["whole"].encoder.encode(["airlines"])
    with pytest.raises(QueryError, match="shape"):
        sharded.search_vectors(vectors, top_k=3)  # dense only: the index also has n-grams
    hits = sharded.match("airlines", top_k=3, explain=True)
    for hit in hits:
        mixed = (1 - hit["weight"]) * hit["dense"] + hit["weight"] * hit["lexical"]
        assert hit["score"] == pytest.approx(mixed, abs=1e-4)


def test_a_rebuilt_or_updated_shard_is_picked_up(built, tmp_path):
    moved = built["entities"][0]
    renamed = {**moved, "name": "Quantum teleportation services", "aliases": []}
    shard0 = built["shards"][0]
    updated = update_index(shard0.path, tmp_path / "shard0-v2", add=[renamed],
                           show_progress=False)  # fmt: skip
    sharded = load_shards([updated.path, built["shards"][1].path, built["shards"][2].path])
    hit = sharded.match("quantum teleportation")
    assert hit["id"] == moved["id"] and hit["text"] == renamed["name"]


def test_mismatched_shards_are_refused(built, tmp_path):
    dense_only = build_index(built["entities"][:50], tmp_path / "dense", lexical=False,
                             show_progress=False)  # fmt: skip
    with pytest.raises(ArtifactIncompatibleError, match="lexical"):
        load_shards([built["shards"][0].path, dense_only.path])
    with pytest.raises(QueryError, match="not a shard set"):
        load_shards(built["shards"][0].path)
    with pytest.raises(QueryError, match="non-empty list"):
        load_shards([])


def test_cli_query_with_shards(built, capsys):
    paths = [str(s.path) for s in built["shards"]]
    argv = ["query", paths[0], "airlines", "--shard", paths[1], "--shard", paths[2], "--json",
            "--top-k", "2"]  # fmt: skip
    assert cli_main(argv) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    expected = built["whole"].match("airlines", top_k=2)
    assert [m["score"] for m in line["matches"]] == pytest.approx(
        [h["score"] for h in expected], abs=1e-5
    )
    assert cli_main([*argv, "--scorer", "index"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[0]) == line
    assert cli_main([*argv, "--scorer", "hybrid"]) == 2
    assert "not a shard set" in capsys.readouterr().err
