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

__all__ = [
    "ArtifactCorruptError",
    "ArtifactError",
    "ArtifactExistsError",
    "ArtifactIncompatibleError",
    "ArtifactMissingError",
    "CatalogError",
    "FingerprintMismatchError",
    "MatchIndex",
    "Matcher",
    "ModelError",
    "ModelNotFoundError",
    "NemFaissError",
    "QueryError",
    "TrainingError",
    "__version__",
    "build_index",
    "load_encoder",
    "load_index",
    "register_model",
    "load_shards",
    "ShardedIndex",
    "update_index",
]


def __getattr__(name: str):  # noqa: ANN202 - lazy public API keeps `import` fast
    if name == "build_index":
        from .build import build_index

        return build_index
    if name in ("load_shards", "ShardedIndex"):
        from . import shards

        return getattr(shards, name)
    if name == "update_index":
        from .update import update_index

        return update_index
    if name in ("load_index", "MatchIndex"):
        from . import match_index

        return getattr(match_index, name)
    if name == "Matcher":
        from .matcher import Matcher

        return Matcher
    if name == "load_encoder":
        from .encoders import load_encoder

        return load_encoder
    if name in ("register_model", "ModelSpec"):
        from . import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'novelentitymatcher_faiss' has no attribute {name!r}")
