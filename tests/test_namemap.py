"""The learned cross-language name map: its shipped files, their checks, and what it does."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from babel import Locale

from novelentitymatcher_faiss import build_index, load_index
from novelentitymatcher_faiss.text.lexical import LexicalSettings, featurize, fold, lexical_vectors
from novelentitymatcher_faiss.text.namemap import DATA_DIR, DEFAULT_MAP, load_name_map, project
from novelentitymatcher_faiss.text.normalize import normalize_text

#: Locales of the lexical benchmark; the shipped map was trained without any of them.
BENCHMARK_LOCALES = ("de", "fr", "es", "it", "pt", "nl", "sv", "da", "nb", "pl", "cs", "ro",
                     "hu", "fi", "tr", "id", "ca", "hr", "sk", "sl")  # fmt: skip


def test_shipped_map_is_checked_and_held_out_of_the_benchmark_locales():
    name_map = load_name_map()
    assert name_map.name == DEFAULT_MAP and name_map.weights.shape == (2048, 128)
    assert name_map.weights.dtype == np.float64
    card = json.loads((DATA_DIR / f"{DEFAULT_MAP}.json").read_text())
    assert not set(card["training"]["locales"]) & set(BENCHMARK_LOCALES)
    assert "currencies" not in card["training"]["kinds"]


def test_a_damaged_or_foreign_map_is_refused(tmp_path):
    for name in (f"{DEFAULT_MAP}.json", f"{DEFAULT_MAP}.npy"):
        shutil.copy(DATA_DIR / name, tmp_path / name)
    assert load_name_map(DEFAULT_MAP, tmp_path).weights.shape == (2048, 128)
    weights = tmp_path / f"{DEFAULT_MAP}.npy"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0x40
    weights.write_bytes(bytes(raw))
    load_name_map.cache_clear()
    with pytest.raises(ValueError, match="sha256"):
        load_name_map(DEFAULT_MAP, tmp_path)
    card_file = tmp_path / f"{DEFAULT_MAP}.json"
    card_file.write_text(json.dumps({**json.loads(card_file.read_text()), "format_version": 9}))
    with pytest.raises(ValueError, match="format_version"):
        load_name_map(DEFAULT_MAP, tmp_path)
    with pytest.raises(ValueError, match="newer"):
        load_name_map("cldr-names-v999", tmp_path)
    with pytest.raises(ValueError, match="lowercase"):
        load_name_map("../data/cldr-names-v1", tmp_path)
    load_name_map.cache_clear()


def test_projection_is_the_same_alone_or_in_a_batch():
    name_map = load_name_map()
    rng = np.random.default_rng(0)
    rows = 5000  # over the threaded size: chunks go to threads
    cells = rng.integers(0, 2048, size=(rows, 90))
    shuffled = (cells + np.arange(rows)[:, None] * 2048).ravel()
    batch = project(rng.permutation(shuffled), rows, name_map)
    for row in (0, 2499, 2500, 4999):
        np.testing.assert_array_equal(project(cells[row], 1, name_map)[0], batch[row])
    np.testing.assert_array_equal(project(shuffled[: 2 * 90], 2, name_map), batch[:2])
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-6)
    assert not project(np.zeros(0, dtype=np.int64), 2, name_map).any()
    assert project(np.zeros(0, dtype=np.int64), 0, name_map).shape == (0, 128)


def test_map_matches_country_names_in_languages_it_never_saw(tmp_path):
    english = Locale("en").territories
    codes = [c for c in english if len(c) == 2 and c.isalpha()]
    catalog = [{"id": c, "name": english[c]} for c in codes]
    queries = [
        (name, c)
        for loc in ("fr", "pl", "hu", "fi")
        for c in codes
        if (name := Locale(loc).territories.get(c)) and fold(name) != fold(english[c])
    ]
    texts = [q for q, _ in queries]

    def top1(settings: LexicalSettings) -> float:
        index = build_index(catalog, tmp_path / str(settings.name_map), index_type="flat",
                            lexical=settings, show_progress=False)  # fmt: skip
        hits = index.match(texts)
        return float(np.mean([h["id"] == want for h, (_, want) in zip(hits, queries, strict=True)]))

    with_map, without = top1(LexicalSettings()), top1(replace(LexicalSettings(), name_map=0.0))
    assert with_map >= without + 0.1 and with_map >= 0.8, (with_map, without)


def test_explain_adds_up_and_the_artifact_share_wins(tmp_path):
    english = Locale("en").territories
    catalog = [{"id": c, "name": english[c]} for c in ("DE", "AT", "CH", "FR", "PL", "NL")]
    half = LexicalSettings(name_map=0.5)
    built = build_index(catalog, tmp_path / "half", lexical=half, show_progress=False)
    index = load_index(built.path)
    assert index.lexical == half and index.manifest.lexical.name_map == 0.5
    hits = index.match("Allemagne", top_k=3, explain=True)
    assert hits[0]["id"] == "DE"
    for hit in hits:
        assert hit["score"] == pytest.approx(0.2 * hit["dense"] + 0.8 * hit["lexical"], abs=1e-5)
    query = normalize_text("Allemagne")
    for settings, same in ((half, True), (LexicalSettings(), False)):
        stored = index.search_vectors(featurize([query], index.encoder, settings))[0][0]
        assert (stored["score"] == pytest.approx(hits[0]["score"], abs=1e-6)) is same


def test_a_forked_child_gets_threads_of_its_own():
    import multiprocessing

    texts = [f"Republik {n}" for n in range(5000)]  # over the sizes that use the pools
    settings = LexicalSettings()
    parent = lexical_vectors(texts, settings)  # the parent's pools now hold threads
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        child = pool.apply_async(lexical_vectors, (texts, settings)).get(timeout=120)
    np.testing.assert_array_equal(child, parent)
