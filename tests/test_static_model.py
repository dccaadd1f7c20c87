"""The direct model2vec loader against model2vec itself, on real potion-8m and real
catalog texts: the same sentence vectors, bit for bit."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from model2vec import StaticModel

from novelentitymatcher_faiss.models.encoders import static_mean
from novelentitymatcher_faiss.models.static_model import load_static_parts, map_safetensors

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def texts() -> list[str]:
    out = []
    for name in ("universities.csv", "timezones.csv", "products_mcc.csv", "countries.csv"):
        with open(DATA / name, encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                out += [row["name"], *[a for a in row["aliases"].split("|") if a]]
    # unknown characters only, an empty text, a text longer than max_length tokens
    return out + ["\u2603\u2603", "", " ".join(out[:400])]


def test_direct_loader_gives_model2vecs_vectors(potion_path, texts):
    parts = load_static_parts(potion_path)
    model = StaticModel.from_pretrained(potion_path)
    assert parts is not None and isinstance(parts.embedding, np.memmap)
    assert (parts.unk_token_id, parts.max_length, parts.median_token_length) == (
        model.unk_token_id, model.max_length, model.median_token_length
    )
    np.testing.assert_array_equal(static_mean(parts, texts), static_mean(model, texts))
    np.testing.assert_array_equal(static_mean(parts, texts[:3]), static_mean(model, texts[:3]))
    # and model2vec's own encode (normalized there) points the same way
    ours = static_mean(parts, texts[:200])
    ours /= np.maximum(np.linalg.norm(ours, axis=1, keepdims=True), 1e-12)
    np.testing.assert_allclose(ours, model.encode(texts[:200]), atol=1e-6)


def test_other_layouts_fall_back_to_model2vec(potion_path, tmp_path):
    copy = tmp_path / "potion"
    shutil.copytree(potion_path, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "model_type": "other"}))
    assert load_static_parts(copy) is None
    (copy / "config.json").write_text(json.dumps(config))
    raw = (copy / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(raw[:-10])  # truncated: the data ends early
    assert map_safetensors(copy / "model.safetensors") is None
    assert load_static_parts(copy) is None
