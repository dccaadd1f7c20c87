"""The lexical channel: hashed character n-grams concatenated with the dense vector."""

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from novelentitymatcher_faiss import build_index, load_encoder, load_index
from novelentitymatcher_faiss.catalog import read_catalog
from novelentitymatcher_faiss.lexical import LexicalSettings, combine, featurize, lexical_vectors
from novelentitymatcher_faiss.normalize import normalize_text
from novelentitymatcher_faiss.perturb import one_letter_typo

DATA = Path(__file__).parent / "data"
SETTINGS = LexicalSettings()


def test_vectors_are_unit_length_and_fold_accents():
    v = lexical_vectors(["Zürich", "zurich", "ZURICH", "", "   "], SETTINGS)
    assert v.dtype == np.float32 and v.shape == (5, SETTINGS.dim)
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
    joined = lexical_vectors(["ab cd"], SETTINGS)[0]
    parts = lexical_vectors(["ab", "cd"], SETTINGS)
    # "ab cd" holds exactly the n-grams of " ab " and " cd " (no "b c" window)
    both = parts[0] / np.linalg.norm(parts[0]) + parts[1] / np.linalg.norm(parts[1])
    counts = lexical_vectors(["ab"], LexicalSettings(dim=4096))[0]
    assert np.count_nonzero(counts) == 5  # " a", "ab", "b ", " ab", "ab "
    np.testing.assert_allclose(joined, both / np.linalg.norm(both), atol=1e-6)
    batch = lexical_vectors(["ab", "cd"], SETTINGS)
    np.testing.assert_array_equal(batch, parts)


def test_hashing_is_stable_across_processes():
    code = (
        "from novelentitymatcher_faiss.lexical import LexicalSettings, lexical_vectors;"
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
    custom = LexicalSettings(ngram_min=1, ngram_max=4, dim=64, weight=0.4)
    assert LexicalSettings.from_dict(custom.to_dict()) == custom
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
    assert dense.manifest["lexical"] is None and both.manifest["lexical"] == SETTINGS.to_dict()
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
    custom = LexicalSettings(ngram_min=1, ngram_max=4, dim=128, weight=0.4)
    built = build_index(
        DATA / "universities.csv", tmp_path / "x", lexical=custom, show_progress=False
    )
    index = load_index(built.path)
    assert index.lexical == custom and index.dim == index.model_dim + 128
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
    for settings in (SETTINGS, LexicalSettings(ngram_min=1, ngram_max=4, dim=97)):
        batch = lexical_vectors(texts, settings)
        single = np.vstack([lexical_vectors([t], settings) for t in texts])
        np.testing.assert_array_equal(batch, single)
