"""Retraining: SetFit fine-tuning carried into the index, head-only, distillation, CLI.

Real models (MiniLM for speed; mpnet once, through its pinned wheel source), real FAISS, the
ISO country catalog made from pycountry (``tests/data/countries.csv``) and upstream's
labelled country variants (``tests/data/country_training_data.csv``). A third of the
variants is held out (``holdout_split``); no held-out text is verbatim in the catalog.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import TrainerCallback

from novelentitymatcher_faiss import Matcher, TrainingError, build_index
from novelentitymatcher_faiss.artifact.files import MODEL_DIR
from novelentitymatcher_faiss.cli import main as cli_main
from novelentitymatcher_faiss.index.catalog import read_catalog
from novelentitymatcher_faiss.models.encoders import fingerprint_dir, load_encoder
from novelentitymatcher_faiss.models.sources import fetch_model
from novelentitymatcher_faiss.query.match_index import load_index
from novelentitymatcher_faiss.query.scorers import HEAD_FILE, ClassifierHead
from novelentitymatcher_faiss.text.normalize import NormalizerSettings, normalize_text
from novelentitymatcher_faiss.train.training import (
    check_training_data,
    choose_mode,
    fit_head,
    holdout_split,
    train_index,
    training_data_sha256,
    with_examples,
)

DATA = Path(__file__).parent / "data"
CATALOG = DATA / "countries.csv"
TRAINING = DATA / "country_training_data.csv"
#: SetFit steps for MiniLM: enough to move held-out top-1, about a minute on two cores.
STEPS = 16
#: SetFit steps for mpnet: a tiny budget, the body still measurably moves.
MPNET_STEPS = 4


def catalog_texts() -> set[str]:
    settings = NormalizerSettings()
    return {
        normalize_text(text, settings)
        for entity in read_catalog(CATALOG)
        for text in (entity["name"], *entity["aliases"])
    }


def top1(scorer: Any, held: list[dict[str, str]]) -> float:
    """Share of held-out texts whose best hit (any score) is their label."""
    hits = scorer.match([row["text"] for row in held], threshold=-1.0)
    return sum(bool(h) and h["id"] == row["label"] for row, h in zip(held, hits, strict=True)) / (
        len(held)
    )


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Any:
    """Train and encode on one torch thread, restored afterwards.

    On a shared two-core machine two threads made each training step several times slower;
    both runs of the determinism test use the same setting, as they must.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def split() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    ids = [entity["id"] for entity in read_catalog(CATALOG)]
    return holdout_split(check_training_data(TRAINING, ids), exclude=catalog_texts())


@pytest.fixture(scope="module")
def tuned(split, tmp_path_factory) -> dict[str, Any]:
    """MiniLM, full SetFit training, run from an empty working directory, then saved."""
    cwd = tmp_path_factory.mktemp("cwd")
    temp_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "nem-faiss-train-*")))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        matcher = Matcher(CATALOG, model="minilm").fit(
            split[0], mode="full", max_steps=STEPS, seed=0
        )
        path = matcher.save(tmp_path_factory.mktemp("saved") / "tuned")
    temp_after = set(glob.glob(os.path.join(tempfile.gettempdir(), "nem-faiss-train-*")))
    return {"matcher": matcher, "path": path, "cwd": cwd, "temp_left": temp_after - temp_before}


@pytest.fixture(scope="module")
def head_only(split, tmp_path_factory) -> Matcher:
    """MiniLM with two examples per label at most: ``mode=None`` must pick head-only."""
    few: dict[str, list[dict[str, str]]] = {}
    for row in split[0]:
        few.setdefault(row["label"], [])
        if len(few[row["label"]]) < 2:
            few[row["label"]].append(row)
    examples = [row for rows in few.values() for row in rows]
    return Matcher(CATALOG, model="minilm").fit(examples, seed=0)


# ---------------------------------------------------------------------------- no model needed


def test_mode_is_chosen_from_the_examples():
    two_each = [{"text": t, "label": lab} for lab in ("DE", "FR") for t in ("a", "b")]
    assert choose_mode(None) == "zero-shot" and choose_mode([]) == "zero-shot"
    assert choose_mode(two_each) == "head-only"
    assert choose_mode([*two_each, {"text": "c", "label": "FR"}]) == "full"


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ([{"text": "Germany", "label": "DE"}, {"text": "Atlantis", "label": "XX"}],
         r"'XX' \(training example 2\)"),
        ([{"text": "Germany", "label": "DE"}, {"text": "   ", "label": "FR"}],
         r"training example 2: text '   ' is empty"),
        ([{"text": "Germany", "label": "DE"}, {"text": None, "label": "FR"}],
         r"training example 2: 'text' must be a string"),
        ([{"text": "Germany", "label": "DE"}, {"text": "France"}],
         r"training example 2: 'label' must be"),
        ([{"text": "Germany", "label": "DE"}, {"text": "Deutschland", "label": "DE"}],
         "at least 2 different entities"),
    ],
)  # fmt: skip
def test_bad_training_data_is_a_training_error_naming_it(data, pattern):
    with pytest.raises(TrainingError, match=pattern):
        Matcher(CATALOG, model="minilm").fit(data)


def test_bad_training_files_and_modes(tmp_path):
    no_label = tmp_path / "no_label.csv"
    no_label.write_text("text,entity\nGermany,DE\n", encoding="utf-8")
    with pytest.raises(TrainingError, match="missing column.*'label'"):
        check_training_data(no_label, ["DE"])
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\nGermany,DE\n,FR\n", encoding="utf-8")
    with pytest.raises(TrainingError, match=r"empty\.csv, line 3: text '' is empty"):
        check_training_data(empty, ["DE", "FR"])
    with pytest.raises(TrainingError, match="mode 'hybrid' is not available"):
        Matcher(CATALOG, mode="hybrid")
    with pytest.raises(TrainingError, match="takes no training data"):
        Matcher(CATALOG, model="minilm").fit([{"text": "Deutschland", "label": "DE"}] * 3,
                                             mode="zero-shot")  # fmt: skip
    with pytest.raises(TrainingError, match="needs training data"):
        train_index(CATALOG, None, tmp_path / "out", mode="full")
    assert not (tmp_path / "out").exists()


def test_training_data_hash_is_sha256_of_canonical_json():
    rows = [{"text": "Deutschland", "label": "DE"}, {"text": "Österreich", "label": "AT"}]
    blob = '[{"label":"DE","text":"Deutschland"},{"label":"AT","text":"Österreich"}]'
    assert training_data_sha256(rows) == hashlib.sha256(blob.encode("utf-8")).hexdigest()
    assert training_data_sha256(rows) != training_data_sha256(rows[::-1])


def test_holdout_split_is_deterministic_and_disjoint(split):
    train, held = split
    again = holdout_split([*train, *held], exclude=catalog_texts())
    assert sorted(map(str, again[1])) == sorted(map(str, held))
    assert not {r["text"] for r in held} & catalog_texts()
    assert not {(r["text"], r["label"]) for r in held} & {(r["text"], r["label"]) for r in train}
    assert 25 <= len(held) <= 45 and {r["label"] for r in held} <= {r["label"] for r in train}


def test_head_round_trips_through_safetensors(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 8)).astype(np.float32)
    for labels in (["a", "b"] * 20, ["a", "b", "c", "d"] * 10):  # binary and multinomial
        head = fit_head(vectors, labels, c=10.0)
        loaded = ClassifierHead.load(head.save(tmp_path))
        assert loaded.labels == head.labels == tuple(sorted(set(labels)))
        np.testing.assert_array_equal(loaded.weight, head.weight)
        from sklearn.linear_model import LogisticRegression

        sklearn = LogisticRegression(C=10.0, max_iter=1000).fit(vectors, labels)
        np.testing.assert_allclose(
            loaded.probabilities(vectors), sklearn.predict_proba(vectors), atol=1e-5
        )


# ---------------------------------------------------------------------------- MiniLM


def test_full_training_beats_the_zero_shot_base_model(tuned, head_only, split):
    held = split[1]
    base = top1(head_only.index, held)  # head-only keeps MiniLM's body: its index is zero-shot
    assert top1(tuned["matcher"], held) > base + 0.05


def test_training_writes_nothing_to_the_working_directory(tuned):
    assert os.listdir(tuned["cwd"]) == []
    assert tuned["temp_left"] == set()  # the checkpoint temp dir is removed too


def test_manifest_records_the_training(tuned, split):
    manifest = load_index(tuned["path"]).manifest.to_dict()
    training, model = manifest["training"], manifest["model"]
    base = fetch_model("minilm", show_progress=False)
    assert training["mode"] == "full" and manifest["matcher"]["mode"] == "full"
    assert training["base_model"]["name"] == "minilm"
    assert training["base_model"]["fingerprint"] == fingerprint_dir(base)
    assert training["training_data_sha256"] == training_data_sha256(split[0])
    assert (training["num_epochs"], training["seed"], training["steps"]) == (1, 0, STEPS)
    assert model["bundled"] and model["backend"] == "sentence-transformers"
    assert model["fingerprint"] != training["base_model"]["fingerprint"]  # the body changed
    assert (tuned["path"] / MODEL_DIR / HEAD_FILE).is_file()
    assert str(Path.home()) not in json.dumps(manifest) and tempfile.gettempdir() not in (
        json.dumps(manifest)
    )


def test_training_examples_enter_the_index_as_aliases(tuned, split):
    index = load_index(tuned["path"])
    assert index.manifest.training["example_aliases"] > 0
    settings = NormalizerSettings()
    for row in split[0]:
        entity = index.get(row["label"])
        texts = {normalize_text(t, settings) for t in (entity["name"], *entity["aliases"])}
        assert row["text"] in texts, row
    hits = index.match([row["text"] for row in split[0]], threshold=None)  # the index alone
    right = sum(hit["id"] == row["label"] for hit, row in zip(hits, split[0], strict=True))
    assert right >= 0.98 * len(split[0])


def test_with_examples_adds_each_new_text_once():
    catalog = [{"id": "DE", "name": "Germany", "aliases": ["Deutschland"]},
               {"id": "FR", "name": "France", "aliases": []}]  # fmt: skip
    examples = [{"text": "deutschland", "label": "DE"}, {"text": "allemagne", "label": "DE"},
                {"text": "allemagne", "label": "DE"}, {"text": "frankreich", "label": "FR"}]
    out, added = with_examples(catalog, examples, NormalizerSettings())
    assert [e["aliases"] for e in out] == [["Deutschland", "allemagne"], ["frankreich"]]
    assert added == 2
    assert catalog[1]["aliases"] == []  # the caller's entities are not changed


def test_saved_matcher_reopens_with_every_scorer(tuned, split):
    held = [row["text"] for row in split[1]]
    reopened = Matcher.load(tuned["path"])
    assert reopened.mode == "full" and reopened.scorer is None
    assert reopened.index.manifest.training["default_scorer"] == "hybrid"
    assert reopened.match(held, top_k=3) == tuned["matcher"].match(held, top_k=3)
    head = Matcher.load(tuned["path"])
    head.scorer = "head"
    hits = head.match(held, threshold=0.0)
    labels = {row["label"] for row in split[0]}
    assert all(hit["id"] in labels and 0.0 < hit["score"] <= 1.0 for hit in hits)
    assert top1(head, split[1]) > 0.5


def test_hybrid_scores_are_the_cosine_plus_the_weighted_head_probability(tuned, split):
    from novelentitymatcher_faiss.query.scorers import (
        HYBRID_WEIGHT,
        HeadScorer,
        HybridScorer,
        load_head,
    )

    index = tuned["matcher"].index
    head = load_head(index)
    column = {label: j for j, label in enumerate(head.labels)}
    held = [row["text"] for row in split[1]]
    found = HybridScorer(index, head).match(held, top_k=3, threshold=None)
    plain = index.match(held, top_k=len(index))  # flat: every entity's exact score
    normalized = [index.normalize_query(t) for t in held]
    probabilities = head.probabilities(index.encoder.encode(normalized))
    for hits, candidates, row in zip(found, plain, probabilities, strict=True):
        cosine = {hit["id"]: hit["score"] for hit in candidates}
        assert len(hits) == 3 and [h["score"] for h in hits] == sorted(
            (h["score"] for h in hits), reverse=True
        )
        for hit in hits:
            bonus = HYBRID_WEIGHT * row[column[hit["id"]]] if hit["id"] in column else 0.0
            assert hit["score"] == pytest.approx(cosine[hit["id"]] + bonus, abs=1e-5)
    plain_top = index.match(held, top_k=3)
    for hits, expected in zip(HybridScorer(index, head, weight=0.0).match(held, top_k=3),
                              plain_top, strict=True):  # fmt: skip
        assert [h["score"] for h in hits] == pytest.approx([h["score"] for h in expected], abs=1e-5)
        assert {h["id"] for h in hits} == {h["id"] for h in expected}
    # a dominant head decides: its pick wins even where the index did not return it
    heavy = HybridScorer(index, head, weight=100.0).match(held)
    assert [hit["id"] for hit in heavy] == [
        hit["id"] for hit in HeadScorer(index, head).match(held)
    ]
    # entities without examples stay reachable: their own names find them
    others = [e for e in read_catalog(CATALOG) if e["id"] not in column][:30]
    hits = tuned["matcher"].match([e["name"] for e in others], threshold=-1.0)
    assert sum(hit["id"] == e["id"] for hit, e in zip(hits, others, strict=True)) >= 27
    assert tuned["matcher"].match("", threshold=None) is None


def test_head_only_keeps_the_body_untouched_and_out_of_the_artifact(head_only, split, tmp_path):
    manifest = head_only.index.manifest.to_dict()
    assert head_only.mode == "head-only" and manifest["training"]["default_scorer"] == "hybrid"
    # the body is the registry model itself (same fingerprint), named, not copied: the
    # artifact holds the head and the index, not the model's weights
    assert manifest["model"]["bundled"] is False and manifest["model"]["name"] == "minilm"
    assert manifest["model"]["fingerprint"] == fingerprint_dir(
        fetch_model("minilm", show_progress=False))
    assert not (head_only.index.path / MODEL_DIR).exists()
    assert (head_only.index.path / HEAD_FILE).is_file() and HEAD_FILE in manifest["files"]
    assert sum(f["size"] for f in manifest["files"].values()) < 10_000_000
    with pytest.raises(TrainingError, match="bundle_model=False"):
        train_index(CATALOG, split[0], tmp_path / "x", model="minilm", mode="full",
                    bundle_model=False, show_progress=False)  # fmt: skip
    from novelentitymatcher_faiss import update_index
    from novelentitymatcher_faiss.query.scorers import load_head

    labels = load_head(head_only.index).labels
    for compact in (False, True):  # layered and rewritten updates both keep the head
        updated = update_index(head_only.index.path, tmp_path / f"update-{compact}",
                               remove=["AQ"], compact=compact, show_progress=False)  # fmt: skip
        assert load_head(updated).labels == labels
    # the head is what learned: re-ranking the unchanged index it finds the held-out
    # variants more often than the index alone, and alone more often than the dense
    # vectors it reads (the index's lexical channel and name map already find many)
    assert top1(head_only, split[1]) > top1(head_only.index, split[1])
    dense = build_index(CATALOG, tmp_path / "dense", model="minilm", lexical=False,
                        show_progress=False)  # fmt: skip
    head_only.scorer = "head"
    try:
        assert top1(head_only, split[1]) > top1(dense, split[1])
    finally:
        head_only.scorer = None


def test_hybrid_gives_no_bonus_to_a_labelled_entity_an_update_removed(tuned, split, tmp_path):
    from novelentitymatcher_faiss.index.update import update_index
    from novelentitymatcher_faiss.query.scorers import scorer_for

    label = split[1][0]["label"]
    texts = [row["text"] for row in split[1] if row["label"] == label]
    before = scorer_for(load_index(tuned["path"])).match(texts, top_k=3)
    assert any(hit["id"] == label for hits in before for hit in hits)
    update_index(tuned["path"], tmp_path / "updated", remove=[label], show_progress=False)
    after = scorer_for(load_index(tmp_path / "updated")).match(texts, top_k=3)
    assert all(hit["id"] != label for hits in after for hit in hits)
    assert all(len(hits) == 3 for hits in after)


def test_cli_train_with_the_same_seed_gives_identical_vectors(tuned, split, tmp_path):
    training = tmp_path / "train.csv"
    with open(training, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(split[0])
    out = tmp_path / "cli-artifact"
    argv = ["train", str(CATALOG), str(training), "--out", str(out), "--base-model", "minilm",
            "--mode", "full", "--max-steps", str(STEPS), "--seed", "0", "--no-lexical",
            "--quiet"]  # fmt: skip
    assert cli_main(argv) == 0
    assert cli_main(argv) == 2  # exists, no --overwrite
    first, second = load_index(tuned["path"]), load_index(out)
    assert first.manifest.lexical is not None and second.manifest.lexical is None
    assert (
        second.manifest.training["training_data_sha256"]
        == (first.manifest.training["training_data_sha256"])
    )
    assert second.manifest.model.fingerprint == first.manifest.model.fingerprint
    texts = [row["text"] for row in split[1]]
    np.testing.assert_array_equal(first.encoder.encode(texts), second.encoder.encode(texts))
    base = load_encoder("minilm", show_progress=False).encode(texts)
    assert not np.allclose(base, second.encoder.encode(texts), atol=1e-3)


def test_cli_query_uses_the_trained_artifacts_scorer(tuned, split, capsys):
    texts = [row["text"] for row in split[1]][:8]

    def query(*extra: str) -> list[dict[str, Any]]:
        capsys.readouterr()
        argv = ["query", str(tuned["path"]), *texts, "--top-k", "2", "--json", *extra]
        assert cli_main(argv) == 0
        return [json.loads(line)["matches"] for line in capsys.readouterr().out.splitlines()]

    hybrid = Matcher.load(tuned["path"])
    assert query() == query("--scorer", "hybrid") == hybrid.match(texts, top_k=2, threshold=-1)
    assert query("--scorer", "index") == load_index(tuned["path"]).match(texts, top_k=2)
    assert query("--scorer", "index") != query()  # the head moved some of them
    assert cli_main(["query", str(tuned["path"]), "x", "--scorer", "best"]) == 2


class _Interrupt(TrainerCallback):
    """Stops training with an exception at a given step, as a crash or Ctrl-C would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003, ANN201
        if state.global_step >= self.step:
            raise KeyboardInterrupt(f"interrupted at step {state.global_step}")


def test_interrupted_training_leaves_the_previous_artifact(tuned, split, tmp_path):
    out = tmp_path / "artifact"
    shutil.copytree(tuned["path"], out)
    manifest = (out / "manifest.json").read_bytes()
    texts = [row["text"] for row in split[1]]
    before = load_index(out).match(texts, top_k=2)
    with pytest.raises(KeyboardInterrupt, match="step 2"):
        train_index(CATALOG, split[0], out, model="minilm", mode="full", max_steps=6,
                    overwrite=True, show_progress=False, callbacks=[_Interrupt(2)])  # fmt: skip
    assert (out / "manifest.json").read_bytes() == manifest
    assert load_index(out, verify="full").match(texts, top_k=2) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def _pruned_vocabulary_pattern(texts: list[str]) -> str:
    """A model2vec ``token_remove_pattern`` keeping only the tokens and words of ``texts``.

    Distilling MiniLM's whole vocabulary takes minutes on two cores; these few thousand
    tokens take seconds and exercise the same code.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(fetch_model("minilm", show_progress=False)))
    keep = set(tokenizer.all_special_tokens)
    for text in texts:
        keep.update(text.split())
        keep.update(tokenizer.tokenize(text))
    return "^(?!(?:" + "|".join(map(re.escape, sorted(keep))) + ")$)"


def test_distill_writes_a_static_artifact(tuned, split, tmp_path):
    """Distill the fine-tuned MiniLM (its bundled folder; no second training)."""
    train, held = split
    texts = [*catalog_texts(), *(r["text"] for r in train), *(r["text"] for r in held)]
    options = {"pca_dims": 64, "token_remove_pattern": _pruned_vocabulary_pattern(texts)}
    index = train_index(CATALOG, train, tmp_path / "static", model=str(tuned["path"] / MODEL_DIR),
                        mode="head-only", distill=options, lexical=False,
                        show_progress=False)  # fmt: skip
    manifest = index.manifest.to_dict()
    assert manifest["model"]["backend"] == "model2vec" and manifest["model"]["dim"] == 64
    assert manifest["training"]["distilled"]["added_words"] > 100
    reopened = load_index(index.path)
    assert reopened.encoder.backend == "model2vec"
    assert reopened.match(held[0]["text"], top_k=3) == index.match(held[0]["text"], top_k=3)
    # whole training words keep the fine-tuned body's vectors: the training texts match
    assert top1(index, train) > 0.8



def test_head_only_on_a_static_model_keeps_it_static(split, tmp_path):
    import warnings

    train, held = split
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to a trainable model, no warning
        index = train_index(CATALOG, train, tmp_path / "static-head", model="potion-8m",
                            mode="head-only", show_progress=False)  # fmt: skip
    manifest = index.manifest
    assert manifest.model.name == "potion-8m" and manifest.model.backend == "model2vec"
    assert manifest.training["base_model"]["name"] == "potion-8m" and not manifest.model.bundled
    potion = fetch_model("potion-8m", show_progress=False)
    assert manifest.model.fingerprint == fingerprint_dir(potion)
    assert manifest.size() < 10_000_000 and (index.path / HEAD_FILE).is_file()
    # the head reads the static vectors: re-ranking, it finds more held-out variants than
    # the index alone
    from novelentitymatcher_faiss.query.scorers import scorer_for

    assert top1(scorer_for(index, "hybrid"), held) > top1(scorer_for(index, "index"), held)
    with pytest.raises(TrainingError, match="static"):
        train_index(CATALOG, train, tmp_path / "x", model="potion-8m", mode="head-only",
                    distill=True, show_progress=False)  # fmt: skip


# ---------------------------------------------------------------------------- mpnet


def test_static_model_trains_mpnet_into_a_self_contained_artifact(split, tmp_path):
    train, held = split
    with pytest.warns(UserWarning, match="static model2vec model.*'mpnet'"):
        matcher = Matcher(CATALOG, model="potion-8m").fit(
            train, mode="full", max_steps=MPNET_STEPS, batch_size=8, seed=0
        )
    training = matcher.index.manifest.training
    assert training["requested_model"] == "potion-8m"
    assert training["base_model"]["name"] == "mpnet" and training["steps"] == MPNET_STEPS
    mpnet = fetch_model("mpnet", show_progress=False)
    assert matcher.index.manifest.model.fingerprint != fingerprint_dir(mpnet)
    potion = build_index(CATALOG, tmp_path / "potion", model="potion-8m", lexical=False,
                         show_progress=False)  # fmt: skip
    assert top1(matcher, held) > top1(potion, held)

    path = matcher.index.path  # the fitted artifact itself: no 420 MB copy
    texts = [row["text"] for row in held]
    expected = matcher.match(texts, top_k=2, threshold=0.0)
    script = (
        "import json, sys\n"
        "from novelentitymatcher_faiss import Matcher\n"
        "m = Matcher.load(sys.argv[1], verify='full')\n"
        "print(json.dumps(m.match(json.loads(sys.argv[2]), top_k=2, threshold=0.0)))\n"
    )
    cache = tmp_path / "empty-cache"
    env = {**os.environ, "NEM_FAISS_CACHE_DIR": str(cache), "NEM_FAISS_OFFLINE": "1",
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-c", script, str(path), json.dumps(texts)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert [[h["id"] for h in hits] for hits in got] == [[h["id"] for h in e] for e in expected]
    np.testing.assert_allclose(
        [[h["score"] for h in hits] for hits in got],
        [[h["score"] for h in hits] for hits in expected],
        atol=1e-5,
    )
    assert not cache.exists() or not any(cache.rglob("*.safetensors"))
