"""Redundant IVF assignment (spill), on real potion-8m vectors of upstream's MCC catalog."""

from __future__ import annotations

import json
import random
from pathlib import Path

import faiss
import numpy as np
import pytest

from novelentitymatcher_faiss import ArtifactCorruptError, build_index, load_index
from novelentitymatcher_faiss.index.catalog import read_catalog
from novelentitymatcher_faiss.index.search import rerank_exact
from novelentitymatcher_faiss.index.spill import fill
from novelentitymatcher_faiss.text.perturb import one_letter_typo

PRODUCTS = Path(__file__).parent / "data" / "products_mcc.csv"
NLIST = 32


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("spill")
    options = {"index_type": "ivf-pq", "nlist": NLIST, "nprobe": 1, "show_progress": False}
    spilled = build_index(PRODUCTS, root / "spilled", **options)
    # the same trained quantizer and codebooks (k-means differs from machine to machine),
    # so the two differ only in spill
    trained = faiss.read_index(str(spilled.path / "index.faiss"))
    trained.reset()
    return {
        "spilled": spilled,
        "single": build_index(PRODUCTS, root / "single", spill=1, trained=trained, **options),
        "flat": build_index(PRODUCTS, root / "flat", index_type="flat", show_progress=False),
    }


@pytest.fixture(scope="module")
def typos() -> list[str]:
    rng = random.Random(3)
    names = [e["name"] for e in read_catalog(PRODUCTS)]
    return [one_letter_typo(name, rng) for name in rng.sample(names, 300)]


def test_ivf_pq_files_every_vector_under_two_lists(built: dict) -> None:
    spilled, single = built["spilled"], built["single"]
    assert spilled.manifest.index.spill == spilled.spill == 2
    assert single.manifest.index.spill == single.spill == 1
    assert spilled.index.ntotal == 2 * spilled.n_vectors
    assert single.index.ntotal == single.n_vectors == spilled.n_vectors
    assert type(spilled.index).__name__ == "IndexIVFPQFastScan"


def test_spill_finds_more_exact_top_hits_at_the_same_nprobe(built: dict, typos: list) -> None:
    exact = [hit["score"] for hit in built["flat"].match(typos)]

    def agreement(name: str) -> float:  # tie-aware: products share names
        found = built[name].match(typos)
        return float(np.mean([h is not None and h["score"] >= e - 1e-4
                              for h, e in zip(found, exact, strict=True)]))  # fmt: skip

    # with the same lists, a vector's nearest list is probed either way and spill adds its
    # second: a machine-independent "at least as good" (the margin itself is machine-bound:
    # 0.963 vs 0.943 seen with separately trained indexes; it is in benchmarks/pq_bench.py)
    spilled, single = agreement("spilled"), agreement("single")
    assert spilled >= single, (spilled, single)
    assert spilled >= 0.9


def test_results_never_repeat_a_row_or_an_entity(built: dict, typos: list) -> None:
    index = built["spilled"]
    for hits in index.match(typos[:50], top_k=10):
        assert len(hits) == 10
        assert len({h["id"] for h in hits}) == 10
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_fill_uses_the_nearest_lists(built: dict) -> None:
    vectors = np.array(built["spilled"].vectors, dtype=np.float32)
    index = faiss.index_factory(vectors.shape[1], f"IVF{NLIST},Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index = fill(index, [(0, vectors[:1000]), (1000, vectors[1000:])], 3)
    assert index.ntotal == 3 * len(vectors)
    _, nearest = index.quantizer.search(vectors, 3)
    filed: dict[int, set[int]] = {}
    for number in range(NLIST):
        size = index.invlists.list_size(number)
        for row in faiss.rev_swig_ptr(index.invlists.get_ids(number), size):
            filed.setdefault(int(row), set()).add(number)
    assert len(filed) == len(vectors)
    assert all(filed[row] == set(nearest[row].tolist()) for row in range(len(vectors)))


def test_rerank_keeps_a_repeated_row_once() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50, 8)).astype(np.float32)
    query = vectors[:1].copy()
    rows = np.array([[0, 7, 0, 7, 3, -1]], dtype=np.int64)
    scores, best = rerank_exact(query, rows, vectors, 4)
    assert sorted(best[0, :3].tolist()) == [0, 3, 7]
    assert best[0, 3] == -1 and scores[0, 3] == -np.inf


def test_bad_spill_requests_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs rerank >= 2"):
        build_index(PRODUCTS, tmp_path / "a", index_type="ivf", spill=2, show_progress=False)
    with pytest.raises(ValueError, match="bare IVF index"):
        build_index(PRODUCTS, tmp_path / "b", index_type="PCA64,IVF8,Flat", spill=2, rerank=2,
                    keep_vectors=True, show_progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="positive int"):
        build_index(PRODUCTS, tmp_path / "c", index_type="ivf-pq", spill=0, show_progress=False)
    assert not any((tmp_path / name).exists() for name in "abc")


def test_a_manifest_that_misstates_spill_is_refused(built: dict, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(built["spilled"].path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["index"]["spill"] = 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactCorruptError, match="index holds"):
        load_index(copy)
