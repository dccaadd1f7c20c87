"""Catalog updates without a full re-encode, on real potion-8m and upstream's MCC catalog.

The reference is always a fresh build of the final catalog: an update must answer the way
that build does (exactly for flat and for IVF searched exhaustively).
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import faiss
import numpy as np
import pytest

from novelentitymatcher_faiss import (
    ArtifactError,
    ArtifactExistsError,
    CatalogError,
    build_index,
    load_index,
    update_index,
)
from novelentitymatcher_faiss.cli import main as cli_main
from novelentitymatcher_faiss.index.catalog import read_catalog

PRODUCTS = Path(__file__).parent / "data" / "products_mcc.csv"
NLIST = 16


@pytest.fixture(scope="module")
def change() -> dict:
    """800 old entities; remove every 10th, replace 5, add the last 181 of the catalog."""
    entities = list(read_catalog(PRODUCTS))
    old, extra = entities[:800], entities[800:]
    remove = [e["id"] for e in old[::10]]
    replaced = [
        {**e, "name": e["name"] + " services", "aliases": []} for e in old[1:50:10]
    ]
    gone = set(remove) | {e["id"] for e in replaced}
    final = [e for e in old if e["id"] not in gone] + replaced + extra
    queries = [e["name"][:-1] for e in final[::4]]  # the last letter dropped
    return {"old": old, "add": replaced + extra, "remove": remove, "final": final,
            "queries": queries}  # fmt: skip


@pytest.fixture(scope="module")
def fresh_flat(change, tmp_path_factory):
    return build_index(change["final"], tmp_path_factory.mktemp("fresh") / "flat",
                       index_type="flat", show_progress=False)  # fmt: skip


def digest(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())
            if p.is_file()}  # fmt: skip


def all_vectors(index) -> int:
    """Vector rows of an artifact and its layers (hidden ones included)."""
    return index.n_vectors + sum(layer.n_vectors for layer in index.layers)


def hits(index, queries: list[str], **kw) -> list[list[tuple[float, str]]]:
    """Top-3 (score, text) per query: entities tied on the same text ("Airlines" is the
    alias of dozens) may come back in any order, or either one at the cut."""
    return [[(round(h["score"], 4), h["text"]) for h in found]
            for found in index.match(queries, top_k=3, **kw)]  # fmt: skip


@pytest.mark.parametrize("compact", [True, False])
def test_flat_update_equals_a_fresh_build_and_leaves_the_old_artifact(
    compact, change, fresh_flat, tmp_path
):
    old = build_index(change["old"], tmp_path / "old", index_type="flat", show_progress=False)
    before = digest(old.path)
    new = update_index(old.path, tmp_path / "new", add=change["add"], remove=change["remove"],
                       show_progress=False, compact=compact)  # fmt: skip
    assert digest(old.path) == before
    assert len(load_index(old.path, verify="full")) == 800
    assert len(new) == len(fresh_flat) == len(change["final"])
    assert len(new.layers) == (0 if compact else 1)
    visible = new.n_vectors if compact else all_vectors(new) - 5 * 2 - 80 * 2
    assert visible == fresh_flat.n_vectors  # every MCC entity has one alias: 2 rows each
    assert hits(new, change["queries"]) == hits(fresh_flat, change["queries"])
    a = new.match(change["queries"], top_k=3)
    b = fresh_flat.match(change["queries"], top_k=3)
    np.testing.assert_allclose([[h["score"] for h in x] for x in a],
                               [[h["score"] for h in x] for x in b], atol=1e-6)  # fmt: skip
    for entity in change["final"][::37]:
        assert new.get(entity["id"]) == fresh_flat.get(entity["id"])
    assert all(new.get(i) is None for i in change["remove"])
    lineage = new.manifest.lineage
    assert lineage["added_entities"] == 181
    assert lineage["replaced_entities"] == 5
    assert lineage["removed_entities"] == len(change["remove"])
    assert lineage["reused_vectors"] + lineage["encoded_vectors"] == fresh_flat.n_vectors
    assert lineage["encoded_vectors"] < fresh_flat.n_vectors / 3
    assert lineage["parents"][0]["manifest_sha256"] == before["manifest.json"]
    assert "build_stages" in old.manifest.to_dict() and new.manifest.build_stages is None
    load_index(new.path, verify="full")


@pytest.mark.parametrize(("kind", "compact"), [("ivf", True), ("ivf-fp16", True), ("ivf-sq8", True),
                                               ("ivf-pq", True), ("ivf", False),
                                               ("ivf-pq", False)])  # fmt: skip
def test_ivf_update_keeps_lists_and_matches_a_fresh_build(kind, compact, change, fresh_flat,
                                                          tmp_path):  # fmt: skip
    old = build_index(change["old"], tmp_path / "old", index_type=kind, nlist=NLIST,
                      show_progress=False)  # fmt: skip
    new = update_index(old.path, tmp_path / "new", add=change["add"], remove=change["remove"],
                       show_progress=False, compact=compact)  # fmt: skip
    assert new.spill == old.spill == (2 if kind == "ivf-pq" else 1)
    if compact:  # every vector under ``spill`` lists, old rows and added ones alike
        assert new.index.ntotal == new.n_vectors * new.spill
        assert new.n_vectors == fresh_flat.n_vectors
    else:  # the layer shares the old index's trained quantizer and codes' training
        layer = new.layers[0]
        assert layer.manifest.index.factory == old.manifest.index.factory
        centroids = [faiss.extract_index_ivf(i.index).quantizer.reconstruct_n(0, NLIST)
                     for i in (old, layer)]  # fmt: skip
        np.testing.assert_array_equal(*centroids)
    assert new.nprobe == old.nprobe
    assert new.manifest.index.factory == old.manifest.index.factory
    assert new.manifest.index.nprobe_source == "parent"
    exhaustive = hits(new, change["queries"], nprobe=NLIST)
    if kind == "ivf":  # raw vectors in the lists: exhaustive search is exact search, up to
        # float rounding (FAISS sums IVF and flat inner products in different orders)
        flat = hits(fresh_flat, change["queries"])
        assert [[t for _, t in row] for row in exhaustive] == [[t for _, t in row] for row in flat]
        np.testing.assert_allclose([[s for s, _ in row] for row in exhaustive],
                                   [[s for s, _ in row] for row in flat], atol=1.5e-4)  # fmt: skip
    # top-1 agrees with exact search up to ties (products share names), exhaustively and, at
    # the stored nprobe, about as often as a fresh IVF build of the final catalog does
    exact = fresh_flat.match(change["queries"], top_k=10)
    # ids and texts of the exact best hits: a tie ("Airlines") can hold more than 10 entities
    best = [{v for h in found if h["score"] >= found[0]["score"] - 1e-4
             for v in (h["id"], h["text"])} for found in exact]  # fmt: skip

    def agreement(index, **kw) -> float:
        found = index.match(change["queries"], **kw)
        return float(np.mean([h["id"] in ok or h["text"] in ok
                              for h, ok in zip(found, best, strict=True)]))  # fmt: skip

    assert agreement(new, nprobe=NLIST) >= 0.97
    fresh = build_index(change["final"], tmp_path / "fresh", index_type=kind, nlist=NLIST,
                        nprobe=old.nprobe, show_progress=False)  # fmt: skip
    assert agreement(new) >= agreement(fresh) - 0.02


@pytest.mark.parametrize("compact", [True, False])
def test_hnsw_update_answers_like_a_fresh_build(compact, change, fresh_flat, tmp_path):
    old = build_index(change["old"], tmp_path / "old", index_type="hnsw", show_progress=False)
    new = update_index(old.path, tmp_path / "new", add=change["add"], remove=change["remove"],
                       show_progress=False, compact=compact)  # fmt: skip
    assert len(new) == len(fresh_flat) and len(new.layers) == (0 if compact else 1)
    assert new.manifest.index.ef_search == old.manifest.index.ef_search == new.breadth
    assert type(new.index).__name__ == "IndexHNSWFlat"
    if compact:  # the graph is built again from the kept and added vectors
        assert new.index.ntotal == fresh_flat.n_vectors
    # the widest search agrees with exact search up to entities tied on a text
    wide = new.match(change["queries"], top_k=1, nprobe=1024)
    exact = fresh_flat.match(change["queries"], top_k=1)
    agree = [abs(a["score"] - b["score"]) < 1e-5 for a, b in zip(wide, exact, strict=True)]
    assert np.mean(agree) >= 0.99
    assert not {h["id"] for h in new.match(change["queries"])} & set(change["remove"])


def test_updates_chain_and_record_every_parent(change, tmp_path):
    old = build_index(change["old"], tmp_path / "v1", index_type="flat", show_progress=False)
    v2 = update_index(old.path, tmp_path / "v2", remove=change["remove"][:3],
                      show_progress=False)  # fmt: skip
    v3 = update_index(v2.path, tmp_path / "v3", add=change["add"][-2:], show_progress=False)
    parents = v3.manifest.lineage["parents"]
    assert [p["entities"] for p in parents] == [797, 800]
    assert len(v3) == 799


def test_bad_updates_are_clear_errors_and_write_nothing(change, tmp_path):
    old = build_index(change["old"], tmp_path / "old", index_type="flat", show_progress=False)
    taken = build_index(change["old"][:5], tmp_path / "taken", show_progress=False)
    before = digest(taken.path)
    with pytest.raises(CatalogError, match="'no-such-id'"):
        update_index(old.path, tmp_path / "new", remove=["no-such-id"], show_progress=False)
    with pytest.raises(CatalogError, match="nothing to update"):
        update_index(old.path, tmp_path / "new", show_progress=False)
    with pytest.raises(CatalogError, match="every entity"):
        update_index(old.path, tmp_path / "new", remove=[e["id"] for e in change["old"]],
                     show_progress=False)  # fmt: skip
    with pytest.raises(CatalogError, match="list of ids"):
        update_index(old.path, tmp_path / "new", remove="5411", show_progress=False)
    with pytest.raises(ArtifactExistsError, match="must differ"):
        update_index(old.path, old.path, remove=change["remove"], show_progress=False)
    with pytest.raises(ArtifactExistsError, match="already exists"):
        update_index(old.path, taken.path, remove=change["remove"], show_progress=False)
    with pytest.raises(CatalogError, match="duplicate id"):
        update_index(old.path, tmp_path / "new", add=change["add"][:2] * 2, show_progress=False)
    assert not (tmp_path / "new").exists()
    assert digest(taken.path) == before
    assert len(load_index(old.path, verify="full")) == 800


def test_lossy_index_without_vectors_takes_layers_but_cannot_be_compacted(change, tmp_path):
    old = build_index(change["old"], tmp_path / "old", index_type="IVF16,PQ8x4fs", rerank=0,
                      nprobe=NLIST, show_progress=False)  # fmt: skip
    with pytest.raises(ArtifactError, match="keep_vectors=True"):
        update_index(old.path, tmp_path / "new", remove=change["remove"], show_progress=False,
                     compact=True)  # fmt: skip
    assert not (tmp_path / "new").exists()
    new = update_index(old.path, tmp_path / "new", remove=change["remove"], show_progress=False)
    assert len(new) == 800 - len(change["remove"])
    gone = set(change["remove"])
    found = new.match([e["name"] for e in change["old"][::10]], top_k=5)
    assert not any(hit["id"] in gone for hits in found for hit in hits)


def test_cli_update(change, tmp_path, capsys):
    old = build_index(change["old"], tmp_path / "old", index_type="flat", show_progress=False)
    added = tmp_path / "add.csv"
    with open(added, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "name", "aliases"])
        for entity in change["add"]:
            writer.writerow([entity["id"], entity["name"], "|".join(entity["aliases"])])
    removed = tmp_path / "remove.txt"
    removed.write_text("\n".join(change["remove"]) + "\n", encoding="utf-8")
    argv = ["update", str(old.path), "--out", str(tmp_path / "new"), "--add", str(added),
            "--remove-file", str(removed), "--quiet"]  # fmt: skip
    assert cli_main(argv) == 0
    assert "added 181, replaced 5, removed 80" in capsys.readouterr().out
    assert cli_main(argv) == 2  # --out exists
    assert "already exists" in capsys.readouterr().err
    assert len(load_index(tmp_path / "new")) == len(change["final"])


def test_layered_updates_chain_compact_and_answer_like_a_fresh_build(change, fresh_flat,
                                                                     tmp_path):  # fmt: skip
    old, add, remove = change["old"], change["add"], change["remove"]
    v1 = build_index(old, tmp_path / "v1", index_type="flat", show_progress=False)
    v2 = update_index(v1.path, tmp_path / "v2", add=add[:100], remove=remove[:40],
                      show_progress=False)  # fmt: skip
    # v3 removes an entity that lives in v2's layer and replaces another one there
    in_layer = add[99]["id"]
    v3 = update_index(v2.path, tmp_path / "v3", add=[*add[100:], add[98]],
                      remove=[*remove[40:], in_layer], show_progress=False)  # fmt: skip
    assert [len(v.layers) for v in (v1, v2, v3)] == [0, 1, 2]
    assert v3.get(in_layer) is None and v3.get(add[98]["id"]) == fresh_flat.get(add[98]["id"])
    final = [e for e in change["final"] if e["id"] != in_layer]
    assert len(v3) == len(final) == v3.manifest.layers.entities
    queries = change["queries"]
    # the reference: a fresh build of the same final catalog
    fresh = build_index(final, tmp_path / "fresh", index_type="flat", show_progress=False)
    assert hits(v3, queries) == hits(fresh, queries)
    compacted = update_index(v3.path, tmp_path / "v4", add=[old[2]], compact=True,
                             show_progress=False)  # fmt: skip
    assert compacted.layers == [] and compacted.n_vectors == fresh.n_vectors
    assert hits(compacted, queries) == hits(fresh, queries)
    # the base index is the parent's file, hard-linked: nothing was copied
    base = (v1.path / "index.faiss").stat().st_ino
    assert all((v.path / "index.faiss").stat().st_ino == base for v in (v2, v3))
    load_index(v3.path, verify="full")
    for stale in (v1.path, v2.path):  # each version stands alone once written
        for path in sorted(stale.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
    assert hits(load_index(v3.path, verify="full"), queries) == hits(fresh, queries)


def test_damaged_hidden_mask_is_detected(change, tmp_path):
    v1 = build_index(change["old"], tmp_path / "v1", index_type="flat", show_progress=False)
    v2 = update_index(v1.path, tmp_path / "v2", remove=change["remove"], show_progress=False)
    mask = v2.path / v2.manifest.layers.hidden
    data = bytearray(mask.read_bytes())
    data[-1] ^= 1
    mask.write_bytes(bytes(data))  # a different inode: v1 is untouched
    with pytest.raises(ArtifactError, match="sha256"):
        load_index(v2.path, verify="full")


def test_a_flat_pq_index_cannot_take_layers(change, tmp_path):
    old = build_index(change["old"], tmp_path / "old", index_type="PQ32", show_progress=False)
    with pytest.raises(ArtifactError, match="neither flat, HNSW nor IVF"):
        update_index(old.path, tmp_path / "new", remove=change["remove"], compact=False,
                     show_progress=False)  # fmt: skip
    with pytest.raises(ArtifactError, match="cannot update"):
        update_index(old.path, tmp_path / "new", remove=change["remove"], show_progress=False)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_a_layer_that_hides_most_entities_still_answers_like_a_fresh_build(kind, change,
                                                                           tmp_path):  # fmt: skip
    old = change["old"]
    gone = [e["id"] for i, e in enumerate(old) if i % 10]  # 90% removed
    base = build_index(old, tmp_path / "base", index_type=kind, nlist=NLIST, show_progress=False)
    layered = update_index(base.path, tmp_path / "layered", remove=gone, compact=False,
                           show_progress=False)  # fmt: skip
    kept = old[::10]
    fresh = build_index(kept, tmp_path / "fresh", index_type="flat", show_progress=False)
    queries = [e["name"][:-1] for e in old[::3]]  # mostly names of removed entities
    nprobe = NLIST if kind == "ivf" else None
    assert hits(layered, queries, nprobe=nprobe) == hits(fresh, queries)
    assert not {h["id"] for found in layered.match(queries, top_k=5) for h in found} & set(gone)
