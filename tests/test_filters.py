"""Metadata columns and search-time filters, on real potion-8m and upstream's time-zone
catalog (418 zones, each with its ISO country code).

The reference is an exact filtered brute-force search: every stored vector of the artifact
scored against the query in numpy, the rows of entities the filter rejects dropped, the
best text per entity kept. Filtered results must equal it (ids, and scores to float or
codec precision), on every index kind and path, through layers and shards.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest

from novelentitymatcher_faiss import (
    Matcher,
    QueryError,
    build_index,
    load_shards,
    update_index,
)
from novelentitymatcher_faiss.cli import main as cli_main
from novelentitymatcher_faiss.index.catalog import read_catalog
from novelentitymatcher_faiss.query import filters as filters_module
from novelentitymatcher_faiss.text.lexical import featurize
from novelentitymatcher_faiss.text.normalize import normalize_text
from novelentitymatcher_faiss.text.perturb import one_letter_typo

ZONES = Path(__file__).parent / "data" / "timezones.csv"
AMERICAS = ["US", "CA", "MX", "BR", "AR"]
FILTERS = [
    ({"country_code": AMERICAS}, None),  # about a fifth of the zones
    ({"country_code": "GB"}, None),  # one zone
    ({"country_code": {"gte": "N"}}, None),  # about half
    (None, ["Europe/London", "Europe/Paris", "Asia/Tokyo", "America/Chicago", "Africa/Cairo"]),
    ({"country_code": {"in": AMERICAS, "ne": "US"}}, ["America/Toronto", "America/New_York"]),
]


@pytest.fixture(scope="module")
def zones() -> list[dict]:
    return list(read_catalog(ZONES))


@pytest.fixture(scope="module")
def queries(zones) -> list[str]:
    rng = random.Random(3)
    picked = rng.sample(zones, 60)
    return [one_letter_typo(z["name"], rng) for z in picked] + ["london", "tokio", "sao paulo"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("filters")
    options = {"show_progress": False}
    return {
        "flat": build_index(ZONES, root / "flat", index_type="flat", **options),
        "ivf": build_index(ZONES, root / "ivf", index_type="ivf", nlist=16, keep_vectors=True,
                           **options),
        "ivf-fp16": build_index(ZONES, root / "fp16", index_type="ivf-fp16", nlist=16,
                                **options),
        "ivf-pq": build_index(ZONES, root / "pq", index_type="ivf-pq", nlist=16, **options),
        "hnsw": build_index(ZONES, root / "hnsw", index_type="hnsw", **options),
    }  # fmt: skip


def stored_vectors(index) -> np.ndarray:
    """Every vector row of ``index``, encoded again from its stored texts (float32)."""
    texts = [normalize_text(index.texts[r], index.normalizer) for r in range(index.n_vectors)]
    return featurize(texts, index.encoder, index.lexical)


def keep_mask(index, where, candidates) -> np.ndarray:
    """bool (n_entities,): the filter, evaluated from the stored records in plain Python."""
    def passes(record: dict) -> bool:
        for column, condition in (where or {}).items():
            value = record.get(column)
            if isinstance(condition, list):
                condition = {"in": condition}
            if not isinstance(condition, dict):
                condition = {"eq": condition}
            for op, x in condition.items():
                ok = {"eq": lambda v, x=x: v == x, "ne": lambda v, x=x: v != x,
                      "in": lambda v, x=x: v in x, "gte": lambda v, x=x: v >= x}[op]  # fmt: skip
                if value is None or not ok(value):
                    return False
        return candidates is None or record["id"] in candidates

    return np.array([passes(index.entity(row)) for row in range(index.n_entities)])


def entity_scores(index, vectors, queries) -> np.ndarray:
    """float (nq, n_entities): each entity's best text score, exactly, over ``vectors``."""
    q = featurize([normalize_text(t, index.normalizer) for t in queries], index.encoder,
                  index.lexical)  # fmt: skip
    scores = q @ vectors.T
    best = np.full((len(queries), index.n_entities), -np.inf)
    for i, row in enumerate(scores):
        np.maximum.at(best[i], np.asarray(index.row_entity), row)
    return best


def brute_force(index, vectors, queries, keep, top_k) -> list[list[tuple[str, float]]]:
    """Exact filtered top-k (id, score) per query over ``vectors``."""
    best = entity_scores(index, vectors, queries)
    best[:, ~keep] = -np.inf
    out = []
    for row in best:
        order = np.argsort(-row, kind="stable")[:top_k]
        out.append([(index.ids[int(e)], float(row[e])) for e in order if np.isfinite(row[e])])
    return out


def assert_equal_to_brute_force(index, vectors, queries, where, candidates, atol, top_k=5):
    """Same scores rank by rank; every hit passes the filter and scores what brute force
    gives its entity (ids may swap only between tied entities)."""
    keep = keep_mask(index, where, candidates)
    truth = brute_force(index, vectors, queries, keep, top_k)
    every = entity_scores(index, vectors, queries)
    found = index.match(queries, top_k=top_k, where=where, candidates=candidates)
    row_of = {index.ids[e]: e for e in range(index.n_entities)}
    for q, (hits, expected) in enumerate(zip(found, truth, strict=True)):
        assert len(hits) == len(expected) == min(top_k, int(keep.sum()))
        np.testing.assert_allclose([h["score"] for h in hits], [s for _, s in expected],
                                   atol=atol)  # fmt: skip
        for hit in hits:
            assert keep[row_of[hit["id"]]]
            assert abs(every[q, row_of[hit["id"]]] - hit["score"]) <= atol


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivf-fp16", "ivf-pq", "hnsw"])
@pytest.mark.parametrize("path", ["library", "selector", "exact scan"])
def test_filtered_results_equal_exact_filtered_brute_force(built, queries, kind, path,
                                                           monkeypatch):  # fmt: skip
    index = built[kind]
    if path == "selector":  # force the IDSelector search inside FAISS
        monkeypatch.setattr(filters_module, "EXACT_SCAN_MAX_ROWS", 0)
    if path == "exact scan":
        monkeypatch.setattr(filters_module, "EXACT_SCAN_MAX_ROWS", 10**9)
    vectors = stored_vectors(index)
    # float16 codes and 4-bit PQ (re-ranked exactly) stay within their codec's precision
    atol = 2e-3 if kind == "ivf-fp16" and index.vectors is None else 1e-5
    for where, candidates in FILTERS:
        if kind in ("hnsw", "ivf-pq") and path == "selector":
            # a graph walk, or 4-bit PQ candidates, are approximate with a filter as without:
            # every hit passes and is scored exactly; the top hit is the exact one
            keep = keep_mask(index, where, candidates)
            every = entity_scores(index, vectors, queries)
            found = index.match(queries, top_k=5, where=where, candidates=candidates)
            truth = brute_force(index, vectors, queries, keep, 1)
            agree = np.mean([abs(h[0]["score"] - t[0][1]) < 1e-5 for h, t in
                             zip(found, truth, strict=True)])  # fmt: skip
            assert agree >= 0.95
            rows = {index.ids[e]: e for e in range(index.n_entities)}
            for q, hits in enumerate(found):
                assert all(keep[rows[h["id"]]] for h in hits)
                # one of the entity's texts: its best one, or (a walk that missed it) another
                assert all(h["score"] <= every[q, rows[h["id"]]] + 1e-5 for h in hits)
            continue
        assert_equal_to_brute_force(index, vectors, queries, where, candidates, atol)


def test_a_selective_filter_still_returns_top_k(built, queries, monkeypatch):
    """Eight entities pass; the IVF search (nprobe raised by the filter) finds all of them."""
    monkeypatch.setattr(filters_module, "EXACT_SCAN_MAX_ROWS", 0)
    index = built["ivf-fp16"]
    where = {"country_code": ["GB", "FR", "DE", "JP", "EG"]}
    passing = int(keep_mask(index, where, None).sum())
    assert 5 <= passing < 20
    found = index.match(queries, top_k=passing, nprobe=1, where=where)
    assert all(len(hits) == passing for hits in found)
    unfiltered = index.match(queries, top_k=passing, nprobe=1)
    allowed = {h["id"] for hits in found for h in hits}
    assert sum(h["id"] in allowed for hits in unfiltered for h in hits) < passing * len(queries)


def test_metadata_comes_back_on_request(built):
    index = built["flat"]
    hit = index.match("londn", metadata=True, where={"country_code": "GB"})
    assert hit["id"] == "Europe/London"
    assert hit["metadata"] == {"type": "timezone", "country_code": "GB"}
    assert "metadata" not in index.match("londn")


def test_typed_columns_and_their_conditions(tmp_path):
    # Real figures: 2023 population (UN WPP), EU membership, area in km2 (int or float).
    countries = [
        {"id": "DE", "name": "Germany", "population": 84_482_267, "eu": True, "area": 357_592},
        {"id": "FR", "name": "France", "population": 68_170_228, "eu": True, "area": 551_695.5},
        {"id": "CH", "name": "Switzerland", "population": 8_849_852, "eu": False, "area": 41_285},
        {"id": "NO", "name": "Norway", "population": 5_519_594, "eu": False},
        {"id": "LU", "name": "Luxembourg", "eu": True, "area": 2_586.4,
         "languages": ["lb", "fr", "de"]},
    ]  # fmt: skip
    index = build_index(countries, tmp_path / "eu", index_type="flat", show_progress=False)
    fields = index.manifest.columns["fields"]
    assert {k: v["type"] for k, v in fields.items()} == {
        "population": "int", "eu": "bool", "area": "float", "languages": "json"
    }  # fmt: skip

    def ids(**where) -> list[str]:
        return sorted(h["id"] for h in index.match("land", top_k=5, where=where))

    assert ids(eu=True) == ["DE", "FR", "LU"]
    assert ids(eu="false") == ["CH", "NO"]  # strings (as the CLI passes them) are converted
    assert ids(population={"gte": 8_849_852, "lt": 80_000_000}) == ["CH", "FR"]
    assert ids(population=None) == ["LU"]  # no value
    assert ids(population={"ne": None}) == ["CH", "DE", "FR", "NO"]
    assert ids(area={"lt": "50000"}) == ["CH", "LU"]
    assert ids(population={"not_in": [5_519_594]}) == ["CH", "DE", "FR"]  # no value fails
    assert ids(population={"ne": 5_519_594}) == ["CH", "DE", "FR"]
    assert ids(eu=True, population={"gt": 10**10}) == []  # nothing passes: no hit
    assert index.match("germany", where={"population": {"gt": 10**10}}) is None
    with pytest.raises(QueryError, match="languages.*cannot be filtered"):
        ids(languages="fr")
    with pytest.raises(QueryError, match="unknown operator"):
        ids(population={"between": [1, 2]})
    with pytest.raises(QueryError, match="holds numbers"):
        ids(population="many")
    with pytest.raises(QueryError, match="no column 'capital'"):
        ids(capital="Bern")
    with pytest.raises(QueryError, match="not in this index"):
        index.match("land", candidates=["DE", "XX"])
    with pytest.raises(QueryError, match="single string"):
        index.match("land", candidates="DE")
    with pytest.raises(QueryError, match="where must be a dict"):
        index.match("land", where=[("eu", True)])


def test_filters_through_layered_updates_never_return_removed_entities(zones, queries,
                                                                       tmp_path):  # fmt: skip
    base = build_index(zones, tmp_path / "v1", index_type="flat", show_progress=False)
    removed = [z["id"] for z in zones if z.get("country_code") == "US"][:5]
    added = [{"id": "America/Newtown", "name": "Newtown", "aliases": [], "type": "timezone",
              "country_code": "US"},
             {"id": "Europe/Atlantis", "name": "Atlantis", "aliases": [], "type": "timezone",
              "country_code": "XA", "founded": 1999}]  # fmt: skip
    layered = update_index(base.path, tmp_path / "v2", add=added, remove=removed,
                           compact=False, show_progress=False)  # fmt: skip
    assert layered.layers
    final = [z for z in zones if z["id"] not in removed] + added
    fresh = build_index(final, tmp_path / "fresh", index_type="flat", show_progress=False)
    texts = queries + [z["name"] for z in zones if z["id"] in removed] + ["newtwn"]
    for where in ({"country_code": "US"}, {"country_code": ["US", "XA"]}, {"founded": 1999}):
        got = layered.match(texts, top_k=4, where=where)
        want = fresh.match(texts, top_k=4, where=where)
        for a, b in zip(got, want, strict=True):
            assert [round(h["score"], 5) for h in a] == [round(h["score"], 5) for h in b]
            assert not {h["id"] for h in a} & set(removed)
    assert layered.match("newtwn", where={"country_code": "US"})["id"] == "America/Newtown"
    with pytest.raises(QueryError, match="unknown or removed"):
        layered.match("x", candidates=[removed[0]])
    compacted = update_index(layered.path, tmp_path / "v3", remove=["Europe/Atlantis"],
                             compact=True, show_progress=False)  # fmt: skip
    assert not compacted.layers
    assert compacted.match("atlantis", where={"country_code": "XA"}) is None
    assert compacted.match("newtwn", where={"country_code": "US"})["id"] == "America/Newtown"


def test_filters_across_shards_equal_one_index(zones, queries, built, tmp_path):
    half = len(zones) // 2
    a = build_index(zones[:half], tmp_path / "a", index_type="flat", show_progress=False)
    b = build_index(zones[half:], tmp_path / "b", index_type="ivf", nlist=8,
                    show_progress=False)  # fmt: skip
    shards = load_shards([a.path, b.path])
    whole = built["flat"]
    for where, candidates in FILTERS:
        # nprobe 8 (every list of shard b, raised by the filter anyway): exact, as flat
        got = shards.match(queries, top_k=3, nprobe=8, where=where, candidates=candidates)
        want = whole.match(queries, top_k=3, where=where, candidates=candidates)
        for x, y in zip(got, want, strict=True):
            np.testing.assert_allclose([h["score"] for h in x], [h["score"] for h in y],
                                       atol=1e-5)  # fmt: skip
    with pytest.raises(QueryError, match="not in this index"):
        shards.match("x", candidates=["Nowhere/None"])


def test_cli_query_filters_and_diagnose(built, capsys, tmp_path):
    path = str(built["flat"].path)
    assert cli_main(["query", path, "londn", "new yrok", "--where", "country_code=GB",
                     "--where", "country_code=US", "--metadata", "--json"]) == 0  # fmt: skip
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["matches"][0]["id"] for line in lines] == ["Europe/London", "America/New_York"]
    assert lines[0]["matches"][0]["metadata"]["country_code"] == "GB"
    ids = tmp_path / "ids.txt"
    ids.write_text("Asia/Tokyo\nEurope/Paris\n", encoding="utf-8")
    assert cli_main(["query", path, "tokio", "--candidates", f"@{ids}", "--top-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[1] for line in out] == ["Asia/Tokyo", "Europe/Paris"]
    assert cli_main(["query", path, "x", "--where", "country_code"]) == 2
    assert "expected COLUMN=VALUE" in capsys.readouterr().err
    assert cli_main(["diagnose", path, "londn", "--threshold", "auto", "--top-k", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["candidates"][0]["id"] == "Europe/London" and report["threshold"] == 0.4
    decision = report["decision"]
    assert decision["matched"] and decision["confidence"] >= 0.4 and not decision["is_novel"]
    assert cli_main(["diagnose", path, "qqqq zzzz", "--threshold", "auto"]) == 0
    decision = json.loads(capsys.readouterr().out)["decision"]
    assert decision["matched"] is False and decision["is_novel"] and decision["id"] is None
    assert "below the threshold" in decision["reason"] and "novel" in decision["reason"]
    assert cli_main(["diagnose", path, "londn", "--threshold", "0.9", "--top-k", "2",
                     "--where", "country_code=US"]) == 0  # fmt: skip
    decision = json.loads(capsys.readouterr().out)["decision"]
    assert decision["matched"] is False and "below the threshold" in decision["reason"]
    assert cli_main(["info", path]) == 0
    assert "country_code (string, 418 rows)" in capsys.readouterr().out


def test_matcher_parity_candidates_explain_diagnose_training_info(zones):
    with open(ZONES, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    matcher = Matcher(entities=rows, threshold=0.5).fit()
    assert matcher.match("pari", candidates=["Europe/Paris", "Asia/Tokyo"])["id"] == (
        "Europe/Paris"
    )
    assert matcher.match("pari", candidates=["Asia/Tokyo"]) is None  # below the threshold
    explained = matcher.explain_match("londn", "Europe/London")
    assert explained["text"] == "london" and explained["rank"] == 1
    weight = explained["weight"]
    assert explained["score"] == pytest.approx(
        (1 - weight) * explained["dense"] + weight * explained["lexical"], abs=1e-5
    )
    assert explained["score"] == pytest.approx(matcher.match("londn")["score"], abs=1e-5)
    assert "lon" in explained["shared_ngrams"] and explained["above_threshold"]
    assert explained["confidence"] >= 0.5  # calibrated: the decision is on confidence
    other = matcher.explain_match("londn", "Europe/Paris")  # not the top hit: not answered
    assert other["above_threshold"] is False and other["confidence"] is None
    report = matcher.diagnose("londn", top_k=3)
    assert report["decision"]["id"] == "Europe/London" and report["decision"]["matched"]
    assert len(report["candidates"]) == 3
    assert matcher.diagnose("zzzz qqqq")["decision"]["matched"] is False
    assert matcher.diagnose("   ")["decision"]["reason"] == "the query normalizes to empty text"
    info = matcher.get_training_info()
    assert info["trained"] is False and info["mode"] == "zero-shot"
    assert info["entities"] == len(zones)
    with pytest.raises(QueryError, match="no entity"):
        matcher.explain_match("london", "Nowhere/None")


def test_parquet_catalog_gives_typed_columns(zones, tmp_path):
    """A Parquet catalog keeps its column types: the ISO 3166 numeric code of each zone's
    country (from pycountry) is an int column, aliases a list column."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pycountry

    numeric = {c.alpha_2: int(c.numeric) for c in pycountry.countries}
    rows = [{"id": z["id"], "name": z["name"], "aliases": z["aliases"],
             "country_code": z.get("country_code"),
             "iso_numeric": numeric.get(z.get("country_code"))} for z in zones]  # fmt: skip
    path = tmp_path / "zones.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    index = build_index(path, tmp_path / "pq-zones", index_type="flat", show_progress=False)
    fields = index.manifest.columns["fields"]
    assert fields["iso_numeric"]["type"] == "int" and fields["country_code"]["type"] == "string"
    hit = index.match("londn", where={"iso_numeric": 826}, metadata=True)  # 826: GB
    assert hit["id"] == "Europe/London" and hit["metadata"]["iso_numeric"] == 826
    europe = index.match("berlin", top_k=50, where={"iso_numeric": {"gte": 200, "lt": 300}})
    assert europe and all(numeric[index.get(h["id"])["country_code"]] in range(200, 300)
                          for h in europe)  # fmt: skip
