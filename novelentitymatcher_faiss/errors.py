"""One exception hierarchy for everything the library raises on purpose.

Every error derives from :class:`NemFaissError`, so a service can catch one class.
Messages name the file, row or field involved and say what to do about it.
"""

from __future__ import annotations


class NemFaissError(Exception):
    """Base class of every error raised by novelentitymatcher-faiss."""


class CatalogError(NemFaissError, ValueError):
    """The entity catalog is empty, malformed or inconsistent (names the row)."""


class QueryError(NemFaissError, ValueError):
    """A query is not a string, is empty, or an argument of ``match`` is out of range."""


class ArtifactError(NemFaissError):
    """An index artifact cannot be written or opened."""


class ArtifactMissingError(ArtifactError, FileNotFoundError):
    """The artifact directory or one of its files does not exist."""


class ArtifactExistsError(ArtifactError, FileExistsError):
    """The target path already holds an artifact and ``overwrite`` was not set."""


class ArtifactCorruptError(ArtifactError):
    """A file of the artifact does not match its manifest (size, hash, shape, type)."""


class ArtifactIncompatibleError(ArtifactError):
    """The artifact was written by an incompatible format or FAISS version."""


class ModelError(NemFaissError):
    """A model cannot be resolved, loaded or used as asked."""


class ModelNotFoundError(ModelError, LookupError):
    """No model source could provide the model; the message lists each source tried."""


class FingerprintMismatchError(ModelError):
    """The encoder's fingerprint differs from the one recorded in the artifact."""


class TrainingError(NemFaissError, ValueError):
    """Training data or training settings are invalid."""
