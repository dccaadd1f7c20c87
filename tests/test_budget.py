"""Index choice from a memory budget, and the HNSW coarse quantizer for large nlist."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from novelentitymatcher_faiss import build_index
from novelentitymatcher_faiss.index.budget import (
    index_bytes,
    parse_bytes,
    pick_kind,
    pq_subquantizers,
)
from novelentitymatcher_faiss.index.indexing import (
    HNSW_QUANTIZER_EF,
    HNSW_QUANTIZER_MIN_NLIST,
    MAX_ASSIGN_MULTIPLY_ADDS,
    MAX_DEFAULT_NLIST,
    choose_index,
    default_nlist,
    use_graph_quantizer,
)

PRODUCTS = Path(__file__).parent / "data" / "products_mcc.csv"


@pytest.mark.parametrize(
    ("text", "value"),
    [("2GB", 2 * 10**9), ("1.5GiB", int(1.5 * 2**30)), ("512 MiB", 512 * 2**20),
     ("300kb", 300_000), (4096, 4096)],
)  # fmt: skip
def test_sizes_parse(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("bad", ["two gigs", "5 parsecs", "-1GB", 0, 1.5, True, None])
def test_bad_sizes_are_named(bad):
    with pytest.raises(ValueError, match="memory_budget"):
        parse_bytes(bad)


def test_the_most_accurate_kind_that_fits_is_picked():
    n, d, nlist = 10_000_000, 512, 12_649
    assert pick_kind(50_000, d, 0, 10**9, 100_000) == "flat"
    assert pick_kind(n, d, nlist, 30 * 10**9, 100_000) == "ivf-fp16"
    assert pick_kind(n, d, nlist, 11 * 10**9, 100_000) == "ivf-fp16"
    assert pick_kind(n, d, nlist, 8 * 10**9, 100_000) == "ivf-sq8"
    assert pick_kind(n, d, nlist, 2 * 10**9, 100_000) == "ivf-pq-small"
    small = index_bytes("ivf-pq-small", n, d, nlist)
    pq = index_bytes("ivf-pq", n, d, nlist, spill=2)  # each vector under two lists
    assert small < 10**9 < 2 * 10**9 < pq < 4 * 10**9
    with pytest.raises(ValueError, match="ivf-pq-small needs about"):
        pick_kind(n, d, nlist, 3 * 10**8, 100_000)


@pytest.mark.parametrize(
    ("kind", "d", "m"),
    [("ivf-pq", 512, 256), ("ivf-pq-small", 512, 64), ("ivf-pq-small", 256, 32),
     ("ivf-pq-small", 300, 50), ("ivf-pq", 7, 7), ("ivf-pq-small", 4, 1)],
)  # fmt: skip
def test_pq_subquantizers_divide_the_dimension(kind, d, m):
    assert pq_subquantizers(kind, d) == m and d % m == 0


def test_large_nlist_gets_an_hnsw_quantizer():
    kind, factory, n_list = choose_index("ivf-pq", 10_000_000, 512, 40_000, 2 * 10**9)
    assert n_list >= HNSW_QUANTIZER_MIN_NLIST
    assert factory == f"IVF{n_list}_HNSW32,PQ256x4fs"
    assert choose_index("ivf-pq-small", 5_000_000, 256, None)[1] == "IVF8192,PQ32x4fs"
    assert choose_index("ivf", 1_000_000, 512, None)[1] == "IVF4000,Flat"


def test_auto_is_flat_then_ivf_fp16():
    assert choose_index("auto", 99_999, 512, None) == ("flat", "Flat", 0)
    assert choose_index("auto", 1_000_000, 512, None) == ("ivf-fp16", "IVF4000,SQfp16", 4000)


def test_builds_follow_the_budget(tmp_path):
    roomy = build_index(PRODUCTS, tmp_path / "roomy", memory_budget="1GB", show_progress=False)
    assert roomy.manifest.index.type == "flat"
    sq8 = build_index(PRODUCTS, tmp_path / "sq8", memory_budget="1.5MB", show_progress=False)
    assert sq8.manifest.index.type == "ivf-sq8"
    assert sq8.manifest.index.memory_budget == 1_500_000
    assert (sq8.path / "index.faiss").stat().st_size <= 1_500_000
    # d/8 4-bit codes of this small catalog reach recall@1 0.98 with every list probed
    pq = build_index(PRODUCTS, tmp_path / "pq", memory_budget="900KB", target_top1=0.97,
                     show_progress=False)  # fmt: skip
    assert pq.manifest.index.type == "ivf-pq-small"
    assert pq.manifest.index.rerank == 4 and pq.vectors is not None
    assert (pq.path / "index.faiss").stat().st_size <= 900_000
    assert pq.match("airlines", threshold=None)["text"] == "Airlines"  # many entities share it
    with pytest.raises(ValueError, match="below the smallest index"):
        build_index(PRODUCTS, tmp_path / "tiny", memory_budget="100KB", show_progress=False)
    assert not (tmp_path / "tiny").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.warns(UserWarning, match="over the memory_budget"):
        build_index(PRODUCTS, tmp_path / "flat", index_type="flat", memory_budget="1MB",
                    show_progress=False)  # fmt: skip


def test_an_hnsw_quantizer_artifact_builds_tunes_and_answers(tmp_path):
    index = build_index(PRODUCTS, tmp_path / "hnsw", index_type="IVF32_HNSW32,Flat",
                        show_progress=False)  # fmt: skip
    import faiss

    quantizer = faiss.downcast_index(faiss.extract_index_ivf(index.index).quantizer)
    assert isinstance(quantizer, faiss.IndexHNSW)
    assert index.nprobe is not None
    flat = build_index(PRODUCTS, tmp_path / "flat", index_type="flat", show_progress=False)
    queries = ["airlines", "grocery stores", "hotels motels resorts", "taxicabs limousines"]
    assert [h["score"] for h in index.match(queries, nprobe=32)] == pytest.approx(
        [h["score"] for h in flat.match(queries)], abs=1e-5
    )


def test_an_hnsw_quantizer_searched_exhaustively_is_exact(tmp_path):
    """The graph keeps its efSearch in the file; with every list probed (nprobe above
    efSearch), IVF-Flat is exact search."""
    import faiss

    index = build_index(PRODUCTS, tmp_path / "hnsw", index_type="IVF64_HNSW32,Flat",
                        show_progress=False)  # fmt: skip
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(index.index).quantizer)
    assert quantizer.hnsw.efSearch == HNSW_QUANTIZER_EF
    quantizer.hnsw.efSearch = 16  # FAISS's default: a search still probes nprobe lists
    flat = build_index(PRODUCTS, tmp_path / "flat", index_type="flat", show_progress=False)
    queries = [flat.texts[i][:-1] for i in range(0, len(flat.texts), 7)]
    found = index.match(queries, nprobe=64)
    exact = flat.match(queries)
    assert [h["score"] for h in found] == pytest.approx([h["score"] for h in exact], abs=1e-5)


def test_a_flat_quantizer_swapped_for_a_graph_keeps_the_lists_and_answers(tmp_path):
    """Search through an HNSW graph over the same centroids: the same lists, the same codes;
    probing every list stays exact, and the swap survives writing and reading the file."""
    import faiss

    index = build_index(PRODUCTS, tmp_path / "ivf", index_type="IVF64,Flat", nprobe=64,
                        show_progress=False)  # fmt: skip
    ivf = faiss.extract_index_ivf(index.index)
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    queries = [index.texts[i][1:] for i in range(0, len(index.texts), 5)]
    before = index.match(queries, top_k=3, nprobe=64)
    assert use_graph_quantizer(index.index)
    graph = faiss.downcast_index(ivf.quantizer)
    assert isinstance(graph, faiss.IndexHNSWFlat) and graph.hnsw.efSearch == HNSW_QUANTIZER_EF
    np.testing.assert_array_equal(graph.reconstruct_n(0, ivf.nlist), centroids)
    assert ivf.invlists.compute_ntotal() == index.n_vectors
    assert not use_graph_quantizer(index.index)  # already a graph: nothing to do
    assert index.match(queries, top_k=3, nprobe=64) == before
    faiss.write_index(index.index, str(tmp_path / "swapped.faiss"))
    del index, ivf, graph
    reread = faiss.read_index(str(tmp_path / "swapped.faiss"))
    assert isinstance(faiss.downcast_index(faiss.extract_index_ivf(reread).quantizer),
                      faiss.IndexHNSWFlat)  # fmt: skip


def test_default_nlist_follows_sqrt_n_then_the_assignment_cost():
    assert default_nlist(1000, 256) == 25  # 39 training vectors per list at least
    assert default_nlist(1_298_966, 512) == int(4 * 1_298_966**0.5)  # 4 sqrt(n)
    assert default_nlist(5_000_000, 256) == MAX_DEFAULT_NLIST
    big = default_nlist(13_148_916, 512)  # exact assignment stays within its budget
    assert big < MAX_DEFAULT_NLIST and 13_148_916 * 512 * big <= MAX_ASSIGN_MULTIPLY_ADDS
    assert 13_148_916 * 512 * (big + 1) > MAX_ASSIGN_MULTIPLY_ADDS
