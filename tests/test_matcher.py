"""The upstream-compatible Matcher facade, on real potion-8m and a real catalog."""

import asyncio
from pathlib import Path

import pytest

from novelentitymatcher_faiss import Matcher, NemFaissError, TrainingError, build_index
from novelentitymatcher_faiss.index.catalog import read_catalog

UNIVERSITIES = Path(__file__).parent / "data" / "universities.csv"


@pytest.fixture(scope="module")
def entities():
    return list(read_catalog(UNIVERSITIES))


def test_fit_match_with_upstream_defaults(entities):
    matcher = Matcher(entities=entities)  # model="default" is potion-8m, threshold "auto"
    assert matcher.model == "potion-8m" and matcher.threshold == "auto"
    matcher.fit()
    assert len(matcher) == 50
    hit = matcher.match("Harvard Univ")
    assert hit["id"] == "harvard_university" and hit["confidence"] >= 0.4
    assert matcher.match("completely unrelated words about cooking pasta") is None
    hits = matcher.match(["MIT", "Stanford"], top_k=2, threshold=0.0)
    assert [h[0]["id"] for h in hits] == [
        "massachusetts_institute_of_technology",
        "stanford_university",
    ]


def test_embedding_dim_is_accepted_and_used(entities):
    with pytest.warns(UserWarning):
        matcher = Matcher(entities=entities, embedding_dim=128).fit()
    assert matcher.index.model_dim == 128
    assert matcher.match("harvard univ", threshold=0.3)["id"] == "harvard_university"


def test_save_load_and_from_index(tmp_path, entities):
    matcher = Matcher(entities=entities, threshold=0.5).fit()
    saved = matcher.save(tmp_path / "saved")
    loaded = Matcher.load(saved)
    assert loaded.threshold == 0.5
    queries = ["harvrd", "oxford univ", "ETH"]
    assert loaded.match(queries) == matcher.match(queries)
    built = build_index(UNIVERSITIES, tmp_path / "built", show_progress=False)
    wrapped = Matcher.from_index(built.path, threshold=0.2)
    assert wrapped.match("MIT")["id"] == "massachusetts_institute_of_technology"
    with pytest.raises(NemFaissError, match="already exists"):
        matcher.save(saved)


def test_async_variants(entities):
    async def run():
        matcher = await Matcher(entities=entities).fit_async()
        return await matcher.match_async("stanford univ")

    assert asyncio.run(run())["id"] == "stanford_university"


def test_errors_are_clear(entities):
    with pytest.raises(NemFaissError, match="fit"):
        Matcher(entities=entities).match("x")
    with pytest.raises(TrainingError, match="mode"):
        Matcher(entities=entities, mode="telepathy")
    with pytest.raises(TrainingError, match="zero-shot"):
        Matcher(entities=entities).fit([{"text": "Harvard", "label": "harvard_university"}])


def test_fit_takes_texts_and_labels_as_upstream(entities):
    """Upstream's ``fit(texts=[...], labels=[...])``: the same examples as two lists."""
    texts = ["Harvard College", "Crimson university", "MIT Boston", "Tech Institute Cambridge"]
    mit = "massachusetts_institute_of_technology"
    labels = ["harvard_university", "harvard_university", mit, mit]
    matcher = Matcher(entities=entities, model="minilm").fit(texts=texts, labels=labels)
    info = matcher.get_training_info()
    assert info["trained"] is True and info["mode"] == "head-only"
    assert matcher.match("Harvard College")["id"] == "harvard_university"
    with pytest.raises(TrainingError, match="same length"):
        Matcher(entities=entities).fit(texts=texts, labels=labels[:2])
    with pytest.raises(TrainingError, match="not both"):
        Matcher(entities=entities).fit([{"text": "x", "label": mit}], texts=texts,
                                       labels=labels)  # fmt: skip
