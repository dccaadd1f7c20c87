"""The lexical channel: hashed character n-grams concatenated with the dense vector."""

import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from novelentitymatcher_faiss import build_index, load_encoder, load_index
from novelentitymatcher_faiss.index.catalog import read_catalog
from novelentitymatcher_faiss.index.update import update_index
from novelentitymatcher_faiss.text.lexical import (
    WORDS_FILE,
    LexicalSettings,
    WordWeights,
    combine,
    featurize,
    lexical_vectors,
    spelling_forms,
    text_words,
)
from novelentitymatcher_faiss.text.normalize import normalize_text
from novelentitymatcher_faiss.text.perturb import one_letter_typo

DATA = Path(__file__).parent / "data"
SETTINGS = LexicalSettings()
SPELLED = LexicalSettings(name_map=0.0)  # n-grams and spelling forms, no name map
PLAIN = LexicalSettings(phonetic=False, name_map=0.0)


def test_vectors_are_unit_length_and_fold_accents():
    v = lexical_vectors(["Zürich", "zurich", "ZURICH", "", "   "], SETTINGS)
    assert SETTINGS.width == SETTINGS.dim + 128 and SPELLED.width == SPELLED.dim
    assert v.dtype == np.float32 and v.shape == (5, SETTINGS.width)
    np.testing.assert_allclose(np.linalg.norm(v[:3], axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(v[0], v[1])
    np.testing.assert_array_equal(v[1], v[2])
    assert not v[3:].any()  # no n-grams: an all-zero row, never NaN


def test_typos_stay_close_and_unrelated_names_do_not():
    v = lexical_vectors(
        ["harvard university", "harvrd universty", "stanford university", "xq"], SETTINGS
    )
    assert v[0] @ v[1] > 0.7
    assert v[0] @ v[1] > v[0] @ v[2] > v[0] @ v[3]


def test_ngrams_do_not_cross_word_or_text_boundaries():
    wide, wide_plain = replace(SPELLED, dim=4096), replace(PLAIN, dim=4096)
    counts = lexical_vectors(["ab"], wide_plain)[0]
    assert np.count_nonzero(counts) == 5  # " a", "ab", "b ", " ab", "ab "
    # the same five of the spelling key "ab" and of the skeleton "ab", hashed apart
    assert np.count_nonzero(lexical_vectors(["ab"], wide)[0]) == 15
    for settings in (wide, wide_plain):
        # "ab cd" holds exactly the n-grams of " ab " and " cd " (no "b c" window); at 4096
        # buckets each word's n-grams fall in buckets of their own (count 1)
        joined = lexical_vectors(["ab cd"], settings)[0]
        parts = lexical_vectors(["ab", "cd"], settings)
        both = np.count_nonzero(parts, axis=0).astype(np.float32)
        assert both.sum() == np.count_nonzero(parts) == 2 * 5 * (3 if settings.phonetic else 1)
        np.testing.assert_allclose(joined, both / np.linalg.norm(both), atol=1e-6)
        batch = lexical_vectors(["ab", "cd", "ab cd"], settings)
        np.testing.assert_array_equal(batch, np.vstack([parts, joined]))


def test_spelling_forms_bring_variants_across_languages_together():
    assert spelling_forms("Marokko") == ("maroko", "mrk")
    assert spelling_forms("Morocco") == ("moroko", "mrk")
    assert spelling_forms("Kanada") == spelling_forms("Canada") == ("kanada", "knd")
    assert spelling_forms("Phílippines") == ("filipines", "flpns")
    pairs = [("Kanada", "Canada"), ("Marokko", "Morocco"), ("Kolumbien", "Colombia")]
    for settings in (SETTINGS, PLAIN):
        assert len(lexical_vectors([a for a, _ in pairs], settings)) == 3
    for foreign, english in pairs:
        with_forms = lexical_vectors([foreign, english], SPELLED)
        plain = lexical_vectors([foreign, english], PLAIN)
        assert with_forms[0] @ with_forms[1] > plain[0] @ plain[1] + 0.1
    # one text or a batch: the same vectors, with the forms as without
    texts = ["Côte d'Ivoire", "Marokko", "", "São Tomé & Príncipe"]
    for settings in (SETTINGS, SPELLED, PLAIN):
        one_by_one = np.vstack([lexical_vectors([t], settings) for t in texts])
        np.testing.assert_array_equal(lexical_vectors(texts, settings), one_by_one)


def test_hashing_is_stable_across_processes():
    code = (
        "from novelentitymatcher_faiss.text.lexical import LexicalSettings, lexical_vectors;"
        "import sys; vector = lexical_vectors(['Grüße aus Köln'], LexicalSettings());"
        "sys.stdout.write(vector.tobytes().hex())"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(runs) == 1
    assert bytes.fromhex(runs.pop()) == lexical_vectors(["Grüße aus Köln"], SETTINGS).tobytes()


def test_combined_inner_product_is_the_weighted_sum():
    encoder = load_encoder("potion-8m")
    texts = ["general contractors", "generl contractor", "veterinary services"]
    dense = encoder.encode(texts)
    lexical = lexical_vectors(texts, SETTINGS)
    both = combine(dense, lexical, 0.3)
    expected = 0.7 * (dense @ dense.T) + 0.3 * (lexical @ lexical.T)
    np.testing.assert_allclose(both @ both.T, expected, atol=1e-5)
    np.testing.assert_allclose(featurize(texts, encoder, LexicalSettings(weight=0.3)), both)


def test_settings_are_checked_and_round_trip():
    with pytest.raises(ValueError, match="weight"):
        LexicalSettings(weight=1.5)
    with pytest.raises(ValueError, match="ngram"):
        LexicalSettings(ngram_min=4, ngram_max=2)
    with pytest.raises(ValueError, match="name_map"):
        LexicalSettings(name_map=-0.1)
    with pytest.raises(ValueError, match="newer"):
        LexicalSettings(map_name="cldr-names-v999")
    custom = LexicalSettings(ngram_min=1, ngram_max=4, dim=64, weight=0.4, name_map=0.5)
    for settings in (custom, SETTINGS, SPELLED, PLAIN):
        assert LexicalSettings.from_dict(settings.to_dict()) == settings
    assert SETTINGS.to_dict()["map_name"] == "cldr-names-v1" and "map_name" not in SPELLED.to_dict()
    # a manifest entry of the version before spelling forms: plain n-grams, read as before
    old = {"ngram_min": 2, "ngram_max": 3, "dim": 256, "weight": 0.7,
           "hash": "poly1000003-mix9e3779b1-v1", "features": "char_wb"}  # fmt: skip
    assert LexicalSettings.from_dict(old) == replace(PLAIN, weight=0.7, dim=256)
    # and of the version before the name map: spelling forms, no map
    spelled = {**old, "weight": 0.8, "features": "char_wb+spelling-v1"}
    assert LexicalSettings.from_dict(spelled) == replace(SPELLED, dim=256)
    assert "phonetic" not in custom.to_dict() and PLAIN.to_dict()["features"] == "char_wb"
    with pytest.raises(ValueError, match="hashing"):
        LexicalSettings.from_dict({**custom.to_dict(), "features": "char_wb+spelling-v9"})
    with pytest.raises(ValueError, match="hashing"):
        LexicalSettings.from_dict({**custom.to_dict(), "hash": "other"})


@pytest.fixture(scope="module")
def typo_set():
    rng = random.Random(7)
    entities = [*read_catalog(DATA / "universities.csv"), *read_catalog(DATA / "occupations.csv")]
    queries = [(one_letter_typo(e["name"], rng), e) for e in entities]
    changed = [(q, e["id"]) for q, e in queries if normalize_text(q) != normalize_text(e["name"])]
    return entities, changed


def test_lexical_channel_beats_dense_only_on_typos(tmp_path, typo_set):
    entities, queries = typo_set
    dense = build_index(entities, tmp_path / "dense", lexical=False, show_progress=False)
    both = build_index(entities, tmp_path / "both", show_progress=False)
    assert dense.manifest.lexical is None and both.manifest.lexical == SETTINGS
    texts = [q for q, _ in queries]

    def top1(index):
        return np.mean(
            [h["id"] == want for h, (_, want) in zip(index.match(texts), queries, strict=True)]
        )

    assert top1(both) >= top1(dense) + 0.05
    assert top1(both) >= 0.9
    names = [e["name"] for e in entities]  # clean names are not worse
    assert [h["id"] for h in both.match(names)] == [h["id"] for h in dense.match(names)]


def test_explain_parts_add_up_and_artifact_settings_win(tmp_path):
    custom = replace(PLAIN, ngram_min=1, ngram_max=4, dim=128, weight=0.4)
    built = build_index(
        DATA / "universities.csv", tmp_path / "x", lexical=custom, show_progress=False
    )
    index = load_index(built.path)
    assert index.lexical == custom and index.dim == index.model_dim + 128
    query = normalize_text("Harvrd Univ")
    stored = index.search_vectors(featurize([query], index.encoder, custom))[0][0]
    assert index.match("Harvrd Univ")["score"] == pytest.approx(stored["score"], abs=1e-6)
    spelled = featurize([query], index.encoder, replace(custom, phonetic=True))
    other = index.search_vectors(spelled)[0][0]
    assert other["score"] != pytest.approx(stored["score"], abs=1e-4)  # the plain n-grams won
    hits = index.match("harvrd univ", top_k=3, explain=True)
    for hit in hits:
        assert hit["weight"] == 0.4
        assert hit["score"] == pytest.approx(0.6 * hit["dense"] + 0.4 * hit["lexical"], abs=1e-5)
    plain = load_index(built.path).match("harvrd univ", top_k=3)
    assert [h["score"] for h in plain] == [h["score"] for h in hits]
    dense_only = build_index(
        DATA / "universities.csv", tmp_path / "d", lexical=False, show_progress=False
    )
    hit = dense_only.match("MIT", explain=True)
    assert (
        hit["lexical"] is None
        and hit["weight"] == 0.0
        and hit["dense"] == pytest.approx(hit["score"], abs=1e-5)
    )


def test_single_text_path_equals_the_batch_path():
    rng = random.Random(0)
    alphabet = "abcdeé üßΣσς中文🙂\t\nxyz  \u0301\u02d8\u00a8\u2002"  # + marks NFKD spaces
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(30))) for _ in range(500)]
    texts += ["", "  ", "a", "Zürich", "ΟΔΟΣ"]
    # with the name map: on the shared n-grams (default), on its own n-grams (dim 97, 1-4)
    for settings in (SETTINGS, LexicalSettings(ngram_min=1, ngram_max=4, dim=97), PLAIN):
        batch = lexical_vectors(texts, settings)
        single = np.vstack([lexical_vectors([t], settings) for t in texts])
        np.testing.assert_array_equal(batch, single)


def catalog_texts(name: str) -> list[str]:
    """Normalized names and aliases of a tests/data catalog."""
    return [normalize_text(t) for e in read_catalog(DATA / f"{name}.csv")
            for t in (e["name"], *e["aliases"])]  # fmt: skip


def test_word_weights_count_rare_words_more_than_generic_ones():
    texts = catalog_texts("universities")
    words = WordWeights.learn(texts)
    assert words.texts == len(texts) and len(words.hashes) == len(set(words.hashes.tolist()))
    generic, rare, unseen = words.weights(["university", "harvard", "zzyzx"])
    assert generic < rare < unseen  # a word in no text weighs most
    assert (words.weights(["university"]) * 64 % 1 == 0).all()  # multiples of 1/64
    assert text_words("Zürich  Ü-Bahn") == ["zurich", "u-bahn"]
    # the generic word's n-grams count for less of the vector
    plain, weighted = LexicalSettings(), LexicalSettings(word_idf=True).learned(texts)
    pair = ["Harvard University", "Yale University"]
    a, b = (lexical_vectors(pair, s) for s in (plain, weighted))
    assert (b[0, :128] @ b[1, :128]) < (a[0, :128] @ a[1, :128])
    assert plain.learned(texts) is plain  # off: nothing learned


def test_weighted_single_text_path_equals_the_batch_path():
    rng = random.Random(1)
    alphabet = "abcdeé üßΣσς中文🙂\t\nxyz  \u0301\u02d8\u00a8\u2002"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(30))) for _ in range(300)]
    texts += ["", "  ", "a", "Zürich", "ΟΔΟΣ", *catalog_texts("universities")]
    learned = WordWeights.learn(texts[::2])
    for settings in (LexicalSettings(word_idf=True, words=learned),
                     LexicalSettings(word_idf=True, words=learned, name_map=0.0, dim=97)):
        batch = lexical_vectors(texts, settings)
        single = np.vstack([lexical_vectors([t], settings) for t in texts])
        np.testing.assert_array_equal(batch, single)  # fmt: skip


def test_word_weights_are_learned_at_build_stored_and_checked(tmp_path):
    built = build_index(DATA / "universities.csv", tmp_path / "u", keep_vectors=True,
                        lexical=LexicalSettings(word_idf=True), batch_size=16,
                        show_progress=False)  # fmt: skip
    section = built.manifest.to_dict()["lexical"]["word_idf"]
    assert section["version"] == 1 and section["texts"] == built.n_vectors
    assert WORDS_FILE in built.manifest.files
    index = load_index(built.path, verify="full")
    assert index.lexical.words is not None and index.lexical == built.lexical
    learned = WordWeights.learn(catalog_texts("universities"))
    np.testing.assert_array_equal(index.lexical.words.to_array(), learned.to_array())
    # rows written after the catalog was counted equal the query-side features
    texts = [normalize_text(index.texts[i]) for i in range(index.n_vectors)]
    stored = np.load(built.path / "vectors.npy")
    np.testing.assert_array_equal(stored, featurize(texts, index.encoder, index.lexical))
    assert index.match("Harvrd University")["id"] == "harvard_university"
    # a manifest entry this version does not know, or a table that does not match it
    entry = built.manifest.to_dict()["lexical"]
    with pytest.raises(ValueError, match="unsupported word weights"):
        LexicalSettings.from_dict({**entry, "word_idf": {**section, "version": 2}})
    for change, message in (({"words": 3}, "expected uint32"), ({"sha256": "0" * 64}, "sha256")):
        declared = LexicalSettings.from_dict({**entry, "word_idf": {**section, **change}})
        with pytest.raises(ValueError, match=message):
            declared.with_words(built.path)
    declared = LexicalSettings.from_dict(entry)  # read from a manifest: no table yet
    assert declared == index.lexical and declared.words is None
    with pytest.raises(ValueError, match="without their word weights"):
        lexical_vectors(["Harvard"], declared)
    # settings without the entry (older artifacts) read as before: no weights
    assert LexicalSettings.from_dict(SETTINGS.to_dict()) == SETTINGS
    assert "word_idf" not in SETTINGS.to_dict()


def test_updates_keep_the_parent_word_weights(tmp_path):
    built = build_index(DATA / "universities.csv", tmp_path / "u",
                        lexical=LexicalSettings(word_idf=True), show_progress=False)  # fmt: skip
    added = [{"id": "new_u", "name": "Zzyzx Polytechnic University", "aliases": []}]
    for compact in (True, False):
        updated = update_index(built.path, tmp_path / f"c{compact}", add=added,
                               compact=compact, show_progress=False)  # fmt: skip
        reopened = load_index(updated.path, verify="full")
        assert reopened.manifest.lexical == built.manifest.lexical
        np.testing.assert_array_equal(reopened.lexical.words.to_array(),
                                      built.lexical.words.to_array())  # fmt: skip
        assert reopened.match("Zzyzx Polytechnic Univ")["id"] == "new_u"
        assert reopened.match("Harvard University")["id"] == "harvard_university"
