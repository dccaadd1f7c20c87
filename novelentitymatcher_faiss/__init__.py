"""novelentitymatcher-faiss: match messy text to canonical entities with persisted FAISS indexes."""

from __future__ import annotations

from ._version import __version__
from .errors import (
    ArtifactCorruptError,
    ArtifactError,
    ArtifactExistsError,
    ArtifactIncompatibleError,
    ArtifactMissingError,
    CatalogError,
    FingerprintMismatchError,
    ModelError,
    ModelNotFoundError,
    NemFaissError,
    QueryError,
    TrainingError,
)

#: The public names that load their module at first use (keeps ``import`` fast), by module.
_LAZY = {
    "build_index": "index.build", "BuildConfig": "index.build",
    "IndexConfig": "index.indexing", "TuningConfig": "index.tuning",
    "update_index": "index.update",
    "load_index": "query.match_index", "MatchIndex": "query.match_index",
    "load_shards": "query.shards", "ShardedIndex": "query.shards",
    "Manifest": "artifact.manifest", "read_manifest": "artifact.manifest",
    "train_index": "train.training", "TrainConfig": "train.training",
    "Matcher": "matcher",
    "load_encoder": "models.encoders",
    "register_model": "models.registry", "ModelSpec": "models.registry",
}  # fmt: skip

__all__ = [
    "ArtifactCorruptError",
    "ArtifactError",
    "ArtifactExistsError",
    "ArtifactIncompatibleError",
    "ArtifactMissingError",
    "CatalogError",
    "FingerprintMismatchError",
    "ModelError",
    "ModelNotFoundError",
    "NemFaissError",
    "QueryError",
    "TrainingError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str):  # noqa: ANN202 - lazy public API keeps `import` fast
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'novelentitymatcher_faiss' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)
