"""Calibrated confidence on a real catalog (ISO 3166-2 subdivision names from pycountry)
with entities held out of the index, and the model's storage and checks."""

import json
import random
import shutil

import numpy as np
import pycountry
import pytest

from novelentitymatcher_faiss import Matcher, build_index, load_index
from novelentitymatcher_faiss.errors import (
    ArtifactCorruptError,
    ArtifactIncompatibleError,
    NemFaissError,
    QueryError,
)
from novelentitymatcher_faiss.query.calibration import (
    DEFAULT_THRESHOLD,
    FEATURES,
    MIN_ENTITIES,
    Calibration,
    auroc,
    calibration_error,
    fit_logistic,
    resolve_threshold,
)
from novelentitymatcher_faiss.text.perturb import one_letter_typo


def _subdivisions() -> list[dict]:
    seen, out = set(), []
    for sub in sorted(pycountry.subdivisions, key=lambda s: s.code):
        key = sub.name.casefold()
        if key not in seen:
            seen.add(key)
            out.append({"id": sub.code, "name": sub.name})
    random.Random(5).shuffle(out)
    return out[:3000]


@pytest.fixture(scope="module")
def split():
    entities = _subdivisions()
    return entities[300:], entities[:300]  # kept, held out


@pytest.fixture(scope="module")
def calibrated(split, tmp_path_factory):
    return build_index(split[0], tmp_path_factory.mktemp("cal") / "idx", show_progress=False)


def _typos(entities: list[dict], seed: int) -> list[str]:
    rng = random.Random(seed)
    return [one_letter_typo(e["name"], rng) for e in entities]


def test_build_stores_a_checked_calibration(calibrated):
    section = calibrated.manifest.to_dict()["calibration"]
    assert section["features"] == list(FEATURES) and section["version"] == 1
    assert "calibrate" in calibrated.manifest.build_stages
    held = section["held_out"]
    assert held["auroc"] >= 0.85 and held["ece"] <= 0.1 and held["examples"] > 500
    again = Calibration.from_dict(json.loads(json.dumps(section)))
    assert again == calibrated.calibration


def test_held_out_entities_get_none_and_typod_known_ones_their_id(split, calibrated):
    kept, held = split
    known, unknown = kept[:200], held[:200]
    found_known = calibrated.match(_typos(known, 1), threshold="auto")
    found_unknown = calibrated.match(_typos(unknown, 2), threshold="auto")
    answered = [hit for hit in found_known if hit is not None]
    right = sum(hit["id"] == e["id"] for hit, e in zip(found_known, known, strict=True) if hit)
    assert len(answered) >= 0.7 * len(known)  # typo'd known names are mostly answered ...
    assert right >= 0.95 * len(answered)  # ... and what is answered is right
    assert sum(hit is not None for hit in found_unknown) <= 0.15 * len(unknown)
    # raw retrieval still returns the nearest name for every query
    assert all(calibrated.match(_typos(unknown, 2), threshold=None))
    assert all(0.0 <= h["confidence"] <= 1.0 for h in answered)


def test_explain_keeps_rejected_hits_and_says_why(split, calibrated):
    kept, held = split
    queries = _typos(kept[:100], 6) + _typos(held[:100], 7)
    decided = calibrated.match(queries, threshold="auto")
    explained = calibrated.match(queries, threshold="auto", explain=True)
    assert all(hit is not None for hit in explained)  # nothing dropped under explain
    for plain, hit in zip(decided, explained, strict=True):
        assert hit["is_novel"] is (plain is None) and hit["accepted"] is (plain is not None)
        assert ("no entity is likely" in hit["reason"]) is hit["is_novel"]
        if plain is not None:
            assert plain["id"] == hit["id"] and plain["confidence"] == hit["confidence"]
    assert sum(hit["is_novel"] for hit in explained[100:]) >= 85  # held-out names: novel
    listed = calibrated.match(held[0]["name"], top_k=3, threshold="auto", explain=True)
    assert len(listed) == 3 and all("accepted" in h for h in listed)


def test_confidence_separates_right_from_wrong_top_hits(split, calibrated):
    kept, held = split
    queries = _typos(kept[:300], 3) + _typos(held, 4)
    owners = [e["id"] for e in kept[:300]] + [None] * len(held)
    hits = calibrated.match(queries, threshold=0.0)
    confidence = np.array([h["confidence"] for h in hits])
    right = np.array([h["id"] == owner for h, owner in zip(hits, owners, strict=True)])
    assert auroc(confidence, right) >= 0.9
    score_auroc = auroc(np.array([h["score"] for h in hits]), right)
    assert auroc(confidence, right) > score_auroc  # better than the raw score it starts from


def test_matcher_decides_by_confidence_and_falls_back_to_the_score(split, calibrated, tmp_path):
    kept, held = split
    matcher = Matcher.from_index(calibrated.path)
    assert matcher.match(kept[0]["name"])["id"] == kept[0]["id"]
    bare = build_index(kept, tmp_path / "bare", show_progress=False, calibrate=False)
    assert bare.manifest.calibration is None and bare.calibration is None
    plain = Matcher.from_index(bare.path)  # no calibration: threshold 0.7 on the score
    hits = [plain.match(t) for t in _typos(held[:50], 5)]
    raw = bare.match(_typos(held[:50], 5))
    assert [h is None for h in hits] == [r["score"] < 0.7 for r in raw]
    assert all("confidence" not in h for h in hits if h)


def test_a_damaged_calibration_is_a_clear_error(calibrated, tmp_path):
    for fault, pattern, error in (
        ({"version": 99}, "confidence model version 99", ArtifactIncompatibleError),
        ({"weights": [1.0, 2.0]}, "one per feature", ArtifactCorruptError),
        ({"scale": [0.0] * len(FEATURES)}, "scales positive", ArtifactCorruptError),
        ({"features": ["score"]}, "calibration features", ArtifactCorruptError),
    ):
        copy = tmp_path / f"copy-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(calibrated.path, copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["calibration"].update(fault)
        (copy / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(error, match=pattern):
            load_index(copy)


def test_threshold_values_are_checked(calibrated):
    with pytest.raises(QueryError, match="threshold must be"):
        calibrated.match("x", threshold="high")
    with pytest.raises(NemFaissError, match="threshold must be"):
        Matcher(entities=[{"id": "a", "name": "A"}], threshold="0.5")
    assert resolve_threshold("auto", True, None) == DEFAULT_THRESHOLD == 0.4
    assert resolve_threshold("auto", False, 0.7) == 0.7
    with pytest.raises(ValueError):
        resolve_threshold(float("nan"), True, None)


def test_small_catalogs_get_no_calibration(tmp_path):
    entities = _subdivisions()[: MIN_ENTITIES - 1]
    small = build_index(entities, tmp_path / "small", show_progress=False)
    assert small.calibration is None
    assert small.match(entities[0]["name"], threshold="auto")["id"] == entities[0]["id"]


def test_auroc_and_calibration_error_agree_with_their_definitions():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(300), 2)  # ties on purpose
    labels = rng.random(300) < scores
    pairs = [(p > n) + 0.5 * (p == n) for p in scores[labels] for n in scores[~labels]]
    assert auroc(scores, labels) == pytest.approx(np.mean(pairs))
    assert np.isnan(auroc(scores, np.ones(300, dtype=bool)))
    assert calibration_error(np.full(10, 0.75), np.array([1] * 7 + [0] * 3)) == pytest.approx(0.05)


def test_logistic_fit_recovers_a_known_model():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20000, 2))
    labels = (rng.random(20000) < 1 / (1 + np.exp(-(2 * x[:, 0] - x[:, 1] + 0.5)))).astype(float)
    mean, scale, weights, bias = fit_logistic(x, labels)
    raw = weights / scale  # back to unstandardized features
    assert raw == pytest.approx([2.0, -1.0], abs=0.1)
    assert bias - float(mean @ raw) == pytest.approx(0.5, abs=0.1)


def test_calibrated_query_path_imports_nothing_heavy(split, calibrated):
    """A fresh process that opens a calibrated artifact and decides on confidence imports
    none of the build-side or heavy modules (cold start)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from novelentitymatcher_faiss import load_index\n"
        f"hit = load_index({str(calibrated.path)!r}).match({split[0][0]['name']!r}, "
        "threshold='auto')\n"
        "assert hit is not None and 'confidence' in hit, hit\n"
        "from novelentitymatcher_faiss.query.scorers import scorer_for\n"
        f"scorer_for(load_index({str(calibrated.path)!r})).match('x')\n"
        "heavy = ('torch', 'transformers', 'huggingface_hub', 'scipy', 'tqdm', 'setfit',"
        " 'sentence_transformers', 'model2vec', 'sklearn', 'novelentitymatcher_faiss.train')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
