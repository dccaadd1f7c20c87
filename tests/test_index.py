"""Build, open and match real artifacts with real potion-8m on real catalogs."""

import json
import os
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from novelentitymatcher_faiss import (
    ArtifactExistsError,
    CatalogError,
    FingerprintMismatchError,
    QueryError,
    build_index,
    load_encoder,
    load_index,
)
from novelentitymatcher_faiss.artifact.files import sha256_file
from novelentitymatcher_faiss.index.catalog import read_catalog
from novelentitymatcher_faiss.text.lexical import LexicalSettings, featurize
from novelentitymatcher_faiss.text.normalize import normalize_text
from novelentitymatcher_faiss.text.perturb import one_letter_typo

DATA = Path(__file__).parent / "data"
PRODUCTS = DATA / "products_mcc.csv"
UNIVERSITIES = DATA / "universities.csv"


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("potion-8m")


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    return build_index(
        PRODUCTS, tmp_path_factory.mktemp("a") / "flat", index_type="flat", show_progress=False
    )


@pytest.fixture(scope="module")
def ivf(tmp_path_factory):
    return build_index(
        PRODUCTS, tmp_path_factory.mktemp("b") / "ivf", index_type="ivf", show_progress=False
    )


@pytest.fixture(scope="module")
def hnsw(tmp_path_factory):
    return build_index(
        PRODUCTS, tmp_path_factory.mktemp("h") / "hnsw", index_type="hnsw", show_progress=False
    )


@pytest.fixture(scope="module")
def unis(tmp_path_factory):
    return build_index(UNIVERSITIES, tmp_path_factory.mktemp("c") / "unis", show_progress=False)


def typo_queries(n: int = 300, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    names = [e["name"] for e in read_catalog(PRODUCTS)]
    return [one_letter_typo(rng.choice(names), rng) for _ in range(n)]


def test_flat_reproduces_exact_cosine_top1(flat, encoder):
    entities = list(read_catalog(PRODUCTS))
    texts, owner = [], []
    for row, entity in enumerate(entities):
        for text in dict.fromkeys(normalize_text(t) for t in [entity["name"], *entity["aliases"]]):
            texts.append(text)
            owner.append(row)
    lexical = LexicalSettings()  # the default: dense + lexical channel in one index
    matrix = featurize(texts, encoder, lexical)
    queries = typo_queries()
    scores = featurize([normalize_text(q) for q in queries], encoder, lexical) @ matrix.T
    best = scores.max(axis=1)
    hits = flat.match(queries)
    np.testing.assert_allclose([hit["score"] for hit in hits], best, atol=1e-5)
    for hit, row, top in zip(hits, scores, best, strict=True):
        # the catalog repeats some names under several ids: any id that ties the maximum is exact
        tied = {entities[owner[i]]["id"] for i in np.flatnonzero(row >= top - 1e-6)}
        assert hit["id"] in tied
    unique = sum(
        len({owner[i] for i in np.flatnonzero(r >= t - 1e-6)}) == 1
        for r, t in zip(scores, best, strict=True)
    )
    assert unique > 200  # most queries have one exact answer, so the check above has teeth


def test_ivf_agrees_with_flat_on_typo_queries(flat, ivf):
    info = ivf.manifest.to_dict()["index"]
    assert info["type"] == "ivf" and info["nlist"] > 1
    assert info["nprobe_tuning"][-1]["recall_at_10"] >= 0.95
    queries = typo_queries(seed=2)
    pairs = list(zip(flat.match(queries), ivf.match(queries), strict=True))
    # IVF-Flat scores are exact, so the same best score means the same answer; the catalog
    # repeats names under several ids, and FAISS breaks such ties differently per index.
    agree = np.mean([abs(a["score"] - b["score"]) < 1e-5 for a, b in pairs])
    assert agree >= 0.98
    distinct = np.mean([a["id"] == b["id"] for a, b in pairs])
    assert distinct > 0.5  # ids agree too wherever the name is unique


def test_hnsw_tunes_ef_search_and_agrees_with_flat(flat, hnsw):
    info = hnsw.manifest.to_dict()["index"]
    assert (info["type"], info["factory"]) == ("hnsw", "HNSW32")
    assert info["faiss_class"] == "IndexHNSWFlat"
    assert info["nprobe"] is None and info["nlist"] == 0 and info["nprobe_tuning"] == []
    tuned = info["ef_search_tuning"][-1]
    assert tuned["ef_search"] == info["ef_search"] == hnsw.ef_search == hnsw.breadth
    assert tuned["recall_at_10"] >= 0.95 and tuned["recall_at_1"] >= 0.99
    queries = typo_queries(seed=2)
    pairs = list(zip(flat.match(queries), hnsw.match(queries), strict=True))
    assert np.mean([abs(a["score"] - b["score"]) < 1e-5 for a, b in pairs]) >= 0.98
    # the per-call override is the efSearch: a wider search never finds a worse top hit
    narrow = hnsw.match(queries, nprobe=1)
    wide = hnsw.match(queries, nprobe=512)
    assert all(w["score"] >= n["score"] - 1e-6 for n, w in zip(narrow, wide, strict=True))
    assert str(hnsw.path / "index.faiss") in Path("/proc/self/maps").read_text()


def test_per_query_nprobe_override(ivf):
    queries = typo_queries(50, seed=3)
    full = ivf.match(queries, top_k=5, nprobe=ivf.manifest.index.nlist)
    one = ivf.match(queries, top_k=5, nprobe=1)
    assert full != one  # nprobe=1 misses some neighbours that exhaustive probing finds
    with pytest.raises(QueryError, match="nprobe"):
        ivf.match("x", nprobe=0)


def test_result_shapes_threshold_and_top_k(unis):
    hit = unis.match("harvard univ")
    assert set(hit) == {"id", "score", "text"} and hit["id"] == "harvard_university"
    assert unis.match("harvard univ", threshold=1.01) is None
    top = unis.match("university of oxford", top_k=3)
    assert len(top) == 3 and len({h["id"] for h in top}) == 3
    assert [h["score"] for h in top] == sorted((h["score"] for h in top), reverse=True)
    batch = unis.match(["MIT", "Stanford"], top_k=2)
    assert len(batch) == 2 and all(len(hits) == 2 for hits in batch)
    everything = unis.match("college", top_k=500)
    assert len(everything) == len(unis) == 50
    assert unis.match(["MIT", "   "])[1] is None  # empty after normalization: no hit
    with pytest.raises(QueryError, match="query 1"):
        unis.match(["MIT", None])
    with pytest.raises(QueryError, match="top_k"):
        unis.match("MIT", top_k=0)


def test_best_alias_per_entity(unis):
    hit = unis.match("MIT")
    assert hit == {
        "id": "massachusetts_institute_of_technology",
        "score": pytest.approx(1.0, abs=1e-5),
        "text": "MIT",
    }
    hits = unis.match("Cambridge University", top_k=5)
    assert hits[0]["text"] == "Cambridge University"
    assert [h["id"] for h in hits].count("university_of_cambridge") == 1


def test_ivf_handles_missing_neighbours(ivf):
    hits = ivf.match("veterinary services", top_k=900, nprobe=1)
    assert 0 < len(hits) < 900  # FAISS -1 ids dropped, not turned into entities
    assert len({h["id"] for h in hits}) == len(hits)


def test_search_vectors_get_and_len(unis, encoder):
    vector = featurize(["stanford"], encoder, LexicalSettings())[0]
    (hits,) = [unis.search_vectors(vector, top_k=2)]
    assert hits[0][0]["id"] == "stanford_university"
    assert unis.get("stanford_university")["aliases"] == ["Stanford", "Stanford Univ"]
    assert unis.get("nope") is None
    with pytest.raises(QueryError, match="shape"):
        unis.search_vectors(np.zeros((1, 3), np.float32))


def test_manifest_records_everything(flat):
    m = flat.manifest.to_dict()
    assert m["format"] == "nem-faiss-index" and m["format_version"] == 1
    assert m["model"]["alias"] == "potion-8m" and m["model"]["dim"] == 256
    assert m["model"]["fingerprint"] == load_encoder("potion-8m").fingerprint
    assert m["metric"] == "inner_product" and m["index"]["faiss_class"] == "IndexFlatIP"
    assert m["counts"]["entities"] == 981 and m["counts"]["vectors"] >= 981
    for name, record in m["files"].items():
        path = flat.path / name
        assert record == {"size": path.stat().st_size, "sha256": sha256_file(path)}
    assert {"index.faiss", "row_entity.npy", "ids.bin", "texts.bin", "entities.jsonl"} <= set(
        m["files"]
    )


def test_manifest_times_each_build_stage(ivf, flat):
    stages = ivf.manifest.build_stages
    for name in ("encode catalog", "encode tuning queries", "train", "add",
                 "exact top 10 (tuning)", "tune nprobe", "write"):  # fmt: skip
        assert stages[name] > 0, name
    assert abs(sum(stages.values()) - ivf.manifest.build_seconds) < 0.01
    assert "exact top 10 (tuning)" not in flat.manifest.build_stages
    assert "tune nprobe" not in flat.manifest.build_stages


def test_index_is_memory_mapped(ivf, flat):
    maps = Path("/proc/self/maps").read_text()
    assert str(ivf.path / "index.faiss") in maps
    assert str(flat.path / "index.faiss") in maps


def test_reopens_in_a_new_process_with_identical_results(flat):
    queries = typo_queries(20, seed=4)
    code = (
        "import json,sys; from novelentitymatcher_faiss import load_index;"
        "idx=load_index(sys.argv[1]);"
        "print(json.dumps(idx.match(json.loads(sys.argv[2]), top_k=3)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(flat.path), json.dumps(queries)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == flat.match(queries, top_k=3)


def test_embedding_dim_truncates(tmp_path):
    with pytest.warns(UserWarning, match="Matryoshka|MRL"):
        index = build_index(UNIVERSITIES, tmp_path / "d64", embedding_dim=64, show_progress=False)
    assert index.model_dim == 64 and index.index.d == 64 + LexicalSettings().width
    assert index.match("harvard univ")["id"] == "harvard_university"


def test_fingerprint_mismatch_is_an_error(tmp_path, unis, encoder):
    model = tmp_path / "my-model"  # a model used by folder path, as a user would
    shutil.copytree(encoder.path, model)
    built = build_index(UNIVERSITIES, tmp_path / "idx", model=str(model), show_progress=False)
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # the model changed on disk after the build: same size, other weights
    weights.write_bytes(bytes(data))
    opened = load_index(built.path)
    with pytest.raises(FingerprintMismatchError, match="fingerprint"):
        opened.match("harvard")
    with pytest.raises(FingerprintMismatchError):
        load_index(unis.path, encoder=load_encoder("potion-8m", embedding_dim=64)).match("x")


def test_bundled_model_opens_without_any_model_source(tmp_path):
    art = tmp_path / "bundled"
    build_index(UNIVERSITIES, art, bundle_model=True, show_progress=False)
    env = {
        **os.environ,
        "NEM_FAISS_CACHE_DIR": str(tmp_path / "empty-cache"),
        "NEM_FAISS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_NO_INDEX": "1",
    }
    code = (
        "import sys; from novelentitymatcher_faiss import load_index;"
        "print(load_index(sys.argv[1]).match('harvrd')['id'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(art)], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "harvard_university"


def test_failed_build_keeps_old_artifact_and_leaves_nothing(tmp_path):
    target = tmp_path / "idx"
    build_index(UNIVERSITIES, target, show_progress=False)
    before = {p.name: sha256_file(p) for p in target.iterdir()}
    with pytest.raises(ArtifactExistsError):
        build_index(UNIVERSITIES, target, show_progress=False)
    rows = [{"id": "a", "name": "Alpha"}, {"id": "b", "name": "Beta"}, {"id": "a", "name": "Again"}]
    with pytest.raises(CatalogError, match="entity 3: duplicate id"):
        build_index(rows, target, overwrite=True, show_progress=False)
    assert {p.name: sha256_file(p) for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temp dirs left behind
    assert load_index(target, verify="full").match("harvard univ")["id"] == "harvard_university"


def test_overwrite_replaces_atomically(tmp_path):
    target = tmp_path / "idx"
    old = build_index(UNIVERSITIES, target, show_progress=False)
    build_index([{"id": "x", "name": "Xylophone"}], target, overwrite=True, show_progress=False)
    assert len(load_index(target)) == 1
    assert old.match("harvard univ")["id"] == "harvard_university"  # open readers keep old data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_factory_string_and_quantized_types(tmp_path, flat):
    sq8 = build_index(PRODUCTS, tmp_path / "sq8", index_type="ivf-sq8", show_progress=False)
    pq = build_index(PRODUCTS, tmp_path / "pq", index_type="ivf-pq", show_progress=False)
    fp16 = build_index(PRODUCTS, tmp_path / "fp16", index_type="ivf-fp16", nlist=32,
                       show_progress=False)  # fmt: skip
    hnsw = build_index(PRODUCTS, tmp_path / "hnsw", index_type="HNSW32", show_progress=False)
    assert pq.manifest.index.rerank == 4 and (pq.path / "vectors.npy").exists()
    assert hnsw.manifest.index.faiss_class == "IndexHNSWFlat"
    assert fp16.manifest.index.nlist == 32 and fp16.manifest.index.nprobe >= 1
    assert fp16.manifest.index.factory == "IVF32,SQfp16"
    queries = typo_queries(100, seed=5)
    exact = flat.match(queries)
    # float16 codes: every score within 1e-3 of the exact cosine of the hit's own text
    for query, hits in zip(queries[:20], fp16.match(queries[:20], top_k=5), strict=True):
        texts = [normalize_text(t, fp16.normalizer) for t in [query, *(h["text"] for h in hits)]]
        vectors = featurize(texts, fp16.encoder, fp16.lexical)
        cosines = vectors[1:] @ vectors[0]
        np.testing.assert_allclose([h["score"] for h in hits], cosines, atol=1e-3)
    # HNSW is not tuned (its efSearch stays FAISS's default), so it gets a lower bar
    for index, bar in ((sq8, 0.95), (pq, 0.95), (fp16, 0.95), (hnsw, 0.8)):
        agree = []
        for hit, best in zip(index.match(queries), exact, strict=True):
            # the catalog repeats names under many ids: the same best text is the same answer
            agree.append(normalize_text(hit["text"]) == normalize_text(best["text"]))
        assert np.mean(agree) >= bar, index
    with pytest.raises(ValueError, match="factory"):
        build_index(PRODUCTS, tmp_path / "bad", index_type="NotAnIndex", show_progress=False)
    assert not (tmp_path / "bad").exists()


def test_copied_artifact_verifies(tmp_path, unis):
    copy = tmp_path / "copy"
    shutil.copytree(unis.path, copy)
    assert (
        load_index(copy, verify="full").match("MIT")["id"]
        == "massachusetts_institute_of_technology"
    )


def test_search_leaves_the_callers_thread_setting_alone():
    """torch shares OpenMP's thread setting: a search must not change what the caller set."""
    import faiss

    from novelentitymatcher_faiss.index.search import search

    index = faiss.IndexFlatIP(8)
    index.add(np.random.default_rng(0).random((100, 8), dtype=np.float32))

    def run(threads: int) -> list[int]:
        faiss.omp_set_num_threads(threads)
        seen = []
        for batch in (1, 5, 1):
            search(index, np.ones((batch, 8), np.float32), 3)
            seen.append(faiss.omp_get_max_threads())
        return seen

    for threads in (1, 3):  # each in a fresh thread, so the main thread's setting is untouched
        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(run, threads).result() == [threads] * 3
