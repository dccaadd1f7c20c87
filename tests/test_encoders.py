from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from novelentitymatcher_faiss.errors import (
    FingerprintMismatchError,
    ModelError,
    ModelNotFoundError,
    QueryError,
)
from novelentitymatcher_faiss.models.encoders import (
    Encoder,
    detect_backend,
    fingerprint_dir,
    fingerprint_files,
    l2_normalize,
    load_encoder,
)
from novelentitymatcher_faiss.models.registry import (
    ModelSpec,
    get_spec,
    register_model,
    unregister_model,
)
from novelentitymatcher_faiss.models.sources import SOURCE_DIR, _write_source, models_dir, safe_name

TEXTS = ["Apple Inc.", "Apple Incorporated", "Microsoft Corporation", "Deutsche Bank AG"]


def _unit_rows(x: np.ndarray, atol: float = 1e-5) -> bool:
    return bool(np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=atol))


@pytest.fixture(scope="module")
def potion() -> Encoder:
    return load_encoder("potion-8m", show_progress=False)


@pytest.fixture(scope="module")
def static_folder(potion_path, tmp_path_factory) -> Path:
    """A sentence-transformers model whose only module is a StaticEmbedding holding the potion
    weights, saved to disk the way sentence-transformers saves it."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    folder = tmp_path_factory.mktemp("static") / "potion-static"
    module = StaticEmbedding.from_model2vec(str(potion_path))
    SentenceTransformer(modules=[module], device="cpu").save(str(folder))
    return folder


def _install_in_cache(folder: Path, model_id: str) -> Path:
    """Copy a model folder into the current cache as a complete entry for ``model_id``."""
    entry = models_dir() / safe_name(model_id)
    shutil.copytree(folder, entry)
    _write_source(entry, {"source": "test", "model_id": model_id})
    return entry


# ---------------------------------------------------------------------------- model2vec


def test_potion_vectors(potion):
    assert (potion.backend, potion.dim, potion.native_dim) == ("model2vec", 256, 256)
    assert potion.spec is get_spec("potion-8m") and potion.model_name == "potion-8m"
    x = potion.encode(TEXTS)
    assert x.shape == (4, 256) and x.dtype == np.float32 and x.flags.c_contiguous
    assert _unit_rows(x)
    assert x[0] @ x[1] > x[0] @ x[2]
    assert x[0] @ x[1] > x[0] @ x[3]
    assert np.array_equal(potion.encode(TEXTS, batch_size=1), x)


def test_own_static_path_matches_model2vec(potion):
    """The library's model2vec encode gives model2vec's vectors, one text or a batch."""
    texts = [*TEXTS, "", "\u2603", "Zürich Hauptbahnhof", "x" * 5000, "word " * 2000]
    texts += [f"catalog item {i} of {i * 7}" for i in range(20)]  # past the small-batch path
    from model2vec import StaticModel

    ours = potion.encode(texts)  # read through the direct loader (static_model.py)
    model = StaticModel.from_pretrained(potion.path)
    theirs = l2_normalize(model.encode(texts, use_multiprocessing=False))
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    singles = np.vstack([potion.encode([text]) for text in texts])
    assert np.array_equal(singles, ours)


def test_default_is_potion(potion):
    enc = load_encoder(show_progress=False)
    assert enc.spec is potion.spec and enc.fingerprint == potion.fingerprint


def test_empty_and_tokenless_texts(potion):
    empty = potion.encode([])
    assert empty.shape == (0, 256) and empty.dtype == np.float32
    x = potion.encode(["", "\u2603\u2603", "bank"])
    assert not np.isnan(x).any()
    assert np.array_equal(x[0], np.zeros(256, np.float32))
    assert np.array_equal(x[1], np.zeros(256, np.float32))
    assert abs(np.linalg.norm(x[2]) - 1.0) < 1e-5


def test_bad_inputs(potion):
    with pytest.raises(QueryError, match="not a single string"):
        potion.encode("Apple Inc.")
    with pytest.raises(QueryError, match="text 1 is a int"):
        potion.encode(["a", 3])
    with pytest.raises(QueryError, match="batch_size"):
        potion.encode(["a"], batch_size=0)


def test_truncation_renormalizes_and_warns_for_non_mrl(potion):
    full = potion.encode(TEXTS)
    with pytest.warns(UserWarning, match="not a Matryoshka"):
        small = load_encoder("potion-8m", embedding_dim=64, show_progress=False)
    assert (small.dim, small.native_dim) == (64, 256)
    x = small.encode(TEXTS)
    assert x.shape == (4, 64) and x.flags.c_contiguous
    assert _unit_rows(x)
    prefix = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(x, prefix, atol=1e-6)
    assert small.fingerprint == potion.fingerprint


def test_full_dim_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_encoder("potion-8m", embedding_dim=256, show_progress=False).dim == 256


@pytest.mark.parametrize("dim", [0, -1, 257, True, 64.0])
def test_embedding_dim_out_of_range(dim):
    with pytest.raises(ModelError, match="embedding_dim"):
        load_encoder("potion-8m", embedding_dim=dim, show_progress=False)


def test_l2_normalize_zero_and_nan_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [np.nan, 1.0]], dtype=np.float64)
    out = l2_normalize(x)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, [[0.6, 0.8], [0, 0], [0, 0]])


# ---------------------------------------------------------------------------- sentence-transformers


def test_minilm_vectors(minilm_path):
    enc = load_encoder("minilm", show_progress=False)
    assert (enc.backend, enc.dim, enc.path) == ("sentence-transformers", 384, minilm_path)
    x = enc.encode(TEXTS, batch_size=2)
    assert x.shape == (4, 384) and x.dtype == np.float32 and x.flags.c_contiguous
    assert _unit_rows(x)
    assert x[0] @ x[1] > x[0] @ x[2]
    with pytest.warns(UserWarning, match="not a Matryoshka"):
        short = load_encoder("minilm", embedding_dim=100, show_progress=False)
    y = short.encode(TEXTS[:1])
    assert y.shape == (1, 100) and _unit_rows(y)
    np.testing.assert_allclose(y[0], x[0, :100] / np.linalg.norm(x[0, :100]), atol=1e-5)


def test_static_embedding_folder(static_folder, potion):
    assert detect_backend(static_folder) == "static"
    enc = load_encoder(str(static_folder), show_progress=False)
    assert (enc.backend, enc.dim, enc.native_dim) == ("static", 256, 256)
    assert enc.spec.backend == "static" and not enc.spec.mrl
    assert enc.model_name == str(static_folder)
    texts = TEXTS + ["International Business Machines", "the bank of the river"]
    x, ref = enc.encode(texts), potion.encode(texts)
    assert _unit_rows(x)
    assert np.min(np.sum(x * ref, axis=1)) > 0.999


def test_registered_mrl_alias_truncates_without_warning(static_folder, empty_cache):
    """A run-time registered static MRL model, found in the cache by its alias."""
    spec = ModelSpec(
        alias="test-static-mrl",
        model_id="test-org/static-mrl",
        backend="static",
        native_dim=256,
        mrl=True,
        trainable=False,
        language="en",
    )
    register_model(spec, overwrite=True)
    try:
        entry = _install_in_cache(static_folder, spec.model_id)
        full = load_encoder("test-static-mrl", show_progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            small = load_encoder("test-static-mrl", embedding_dim=32, show_progress=False)
    finally:
        unregister_model("test-static-mrl")
    assert small.spec is spec and small.path == entry and small.model_name == "test-static-mrl"
    assert small.dim == 32
    x, y = full.encode(TEXTS), small.encode(TEXTS)
    assert _unit_rows(y)
    np.testing.assert_allclose(y, x[:, :32] / np.linalg.norm(x[:, :32], axis=1, keepdims=True),
                               atol=1e-5)  # fmt: skip
    assert full.fingerprint == fingerprint_dir(static_folder)  # _source/ is not covered


def test_registered_alias_resolves_through_its_wheel(empty_cache, potion):
    """register_model at run time, then load_encoder by the new alias: fetched from the wheel."""
    wheel = get_spec("potion-8m").wheel
    register_model(
        ModelSpec(
            alias="test-potion-copy",
            model_id="test-org/potion-copy",
            backend="model2vec",
            native_dim=256,
            mrl=False,
            trainable=False,
            language="en",
            wheel=wheel,
        ),
        overwrite=True,
    )
    try:
        enc = load_encoder("test-potion-copy", show_progress=False)
    finally:
        unregister_model("test-potion-copy")
    assert enc.path == empty_cache / "models" / "test-org--potion-copy"
    assert enc.fingerprint == potion.fingerprint
    assert np.array_equal(enc.encode(TEXTS), potion.encode(TEXTS))


def test_registered_dim_must_match_the_files(potion_path, empty_cache):
    register_model(
        ModelSpec(
            alias="test-wrong-dim",
            model_id="test-org/wrong-dim",
            backend="model2vec",
            native_dim=128,
            mrl=False,
            trainable=False,
            language="en",
        ),
        overwrite=True,
    )
    try:
        _install_in_cache(potion_path, "test-org/wrong-dim")
        with pytest.raises(ModelError, match="native_dim=128.*256-dim"):
            load_encoder("test-wrong-dim", show_progress=False)
    finally:
        unregister_model("test-wrong-dim")


# ---------------------------------------------------------------------------- detection


def test_detection_order(potion_path, minilm_path, static_folder, tmp_path):
    # potion's folder also carries a modules.json naming StaticEmbedding: model2vec wins
    assert json.loads((potion_path / "modules.json").read_text())[0]["type"].endswith(
        "StaticEmbedding"
    )
    assert detect_backend(potion_path) == "model2vec"
    assert detect_backend(minilm_path) == "sentence-transformers"
    assert detect_backend(static_folder) == "static"

    # a model2vec folder whose config lacks model_type is recognised by its weights
    bare = tmp_path / "bare-m2v"
    shutil.copytree(potion_path, bare, ignore=shutil.ignore_patterns(SOURCE_DIR))
    config = json.loads((bare / "config.json").read_text())
    del config["model_type"]
    (bare / "config.json").write_text(json.dumps(config))
    assert detect_backend(bare) == "model2vec"
    enc = load_encoder(str(bare), show_progress=False)
    assert enc.backend == "model2vec" and enc.spec.alias == str(bare) and not enc.spec.mrl

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="does not look like"):
        detect_backend(empty)
    with pytest.raises(ModelError, match="does not look like"):
        load_encoder(str(empty), show_progress=False)


def test_model2vec_saved_folder_loads_as_model2vec(potion, tmp_path):
    folder = tmp_path / "saved"
    from model2vec import StaticModel

    StaticModel.from_pretrained(potion.path).save_pretrained(folder)
    assert (folder / "modules.json").is_file()
    enc = load_encoder(str(folder), show_progress=False)
    assert enc.backend == "model2vec"
    np.testing.assert_allclose(enc.encode(TEXTS), potion.encode(TEXTS), atol=1e-6)


def test_unknown_alias():
    with pytest.raises(ModelNotFoundError, match="nem-faiss models list"):
        load_encoder("no-such-model", show_progress=False)


# ---------------------------------------------------------------------------- fingerprints


def test_fingerprint_stable_and_distinct(potion, potion_path, minilm_path):
    again = load_encoder("potion-8m", show_progress=False)
    assert again.fingerprint == potion.fingerprint == fingerprint_dir(potion_path)
    assert len(potion.fingerprint) == 64 and int(potion.fingerprint, 16) >= 0
    assert fingerprint_dir(minilm_path) != potion.fingerprint
    assert "model.safetensors" in fingerprint_files(potion_path)
    assert "1_Pooling/config.json" in fingerprint_files(minilm_path)
    assert not any(
        f.startswith((SOURCE_DIR, "README", "ATTRIBUTION")) for f in fingerprint_files(potion_path)
    )


def test_fingerprint_of_a_copy(potion, potion_path, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(potion_path, copy)
    assert fingerprint_dir(copy) == potion.fingerprint  # location-independent

    (copy / "README.md").write_text("another model card")
    (copy / "desktop.ini").write_text("[junk]")
    (copy / ".gitattributes").write_text("*.safetensors filter=lfs")
    shutil.rmtree(copy / SOURCE_DIR)
    assert fingerprint_dir(copy) == potion.fingerprint  # cards, junk and provenance ignored

    weights = bytearray((copy / "model.safetensors").read_bytes())
    weights[-1] ^= 0x01
    (copy / "model.safetensors").write_bytes(bytes(weights))
    changed = fingerprint_dir(copy)
    assert changed != potion.fingerprint

    (copy / "vocab.txt").rename(copy / "vocab2.txt")
    assert fingerprint_dir(copy) not in (changed, potion.fingerprint)  # names count

    enc = load_encoder(str(copy), show_progress=False)
    with pytest.raises(FingerprintMismatchError, match="different model files"):
        enc.verify_fingerprint(potion.fingerprint)
    enc.verify_fingerprint(enc.fingerprint)


def test_fingerprint_of_non_model_folder(tmp_path):
    with pytest.raises(ModelError, match="not a folder"):
        fingerprint_dir(tmp_path / "missing")
    (tmp_path / "README.md").write_text("x")
    with pytest.raises(ModelError, match="no model files"):
        fingerprint_dir(tmp_path)


def test_fingerprint_stamps_are_reused_and_never_stale(potion, potion_path, tmp_path,
                                                       monkeypatch):  # fmt: skip
    """A folder's fingerprint is remembered with the stat of its files (in the cache dir)
    and recomputed when any file changes, or when the stored file is damaged."""
    import json
    import os

    from novelentitymatcher_faiss.models.encoders import STAMPS_FILE

    monkeypatch.setenv("NEM_FAISS_CACHE_DIR", str(tmp_path / "cache"))
    copy = tmp_path / "copy"
    shutil.copytree(potion_path, copy)  # copy2 keeps the source's (old) times
    assert fingerprint_dir(copy) == potion.fingerprint
    stored = json.loads((tmp_path / "cache" / STAMPS_FILE).read_text())
    entry = stored["folders"][str(copy.resolve())]
    assert stored["version"] == 1 and entry["fingerprint"] == potion.fingerprint
    # the stored fingerprint is what a second call returns: prove it by planting another
    entry["fingerprint"] = "0" * 64
    (tmp_path / "cache" / STAMPS_FILE).write_text(json.dumps(stored))
    assert fingerprint_dir(copy) == "0" * 64
    # same size, one byte flipped, old time kept: the inode stays, the time is restored,
    # so only a change of size, time or inode is seen; here the time differs by 1 ns
    weights = copy / "model.safetensors"
    info = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(info.st_atime_ns, info.st_mtime_ns + 1))
    changed = fingerprint_dir(copy)
    assert changed not in (potion.fingerprint, "0" * 64)
    (tmp_path / "cache" / STAMPS_FILE).write_text("{not json")
    assert fingerprint_dir(copy) == changed  # a damaged file is ignored, then rewritten
    assert json.loads((tmp_path / "cache" / STAMPS_FILE).read_text())["version"] == 1
    # a file written just now is never remembered
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    fresh = fingerprint_dir(copy)
    folders = json.loads((tmp_path / "cache" / STAMPS_FILE).read_text())["folders"]
    assert folders[str(copy.resolve())]["fingerprint"] == changed != fresh
