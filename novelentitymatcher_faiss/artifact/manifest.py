"""The artifact's ``manifest.json`` as typed data: the one module that knows its keys.

:class:`Manifest` (with :class:`ModelInfo`, :class:`IndexInfo`, :class:`Counts` and
:class:`Layers`) reads, checks and writes the manifest of an artifact; :class:`ShardSet`
the ``shards.json`` of a shard set. Sections with a format of their own are read by their
owners: ``normalizer`` (:class:`NormalizerSettings`), ``lexical``
(:class:`LexicalSettings`), ``index.early_stop`` (:class:`EarlyStop`), ``calibration``
(:class:`Calibration`); ``columns`` (:mod:`.columns`), ``training`` (:mod:`.training`) and
``lineage`` stay plain JSON objects here. Every field is documented in
docs/artifact-format.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import ArtifactCorruptError, ArtifactIncompatibleError, ArtifactMissingError
from ..index.search import EarlyStop
from ..query.calibration import CALIBRATION_VERSION, Calibration
from ..text.lexical import LexicalSettings
from ..text.normalize import NormalizerSettings
from .files import MANIFEST

FORMAT = "nem-faiss-index"
FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
#: A shard set folder (written by a distributed build) lists its shards in this file.
SET_FILE = "shards.json"
SET_FORMAT = "nem-faiss-shards"
SET_FORMAT_VERSION = 1
_NONE = type(None)


def _get(section: Any, key: str, kind: Any, where: str, default: Any = ...) -> Any:
    """``section[key]`` checked to be a ``kind`` (bools only where ``kind`` is bool);
    ``default`` when absent (if given). :class:`ArtifactCorruptError` names ``where.key``."""
    if not isinstance(section, dict):
        raise ArtifactCorruptError(f"{where} is not a JSON object; rebuild the artifact")
    if key not in section and default is not ...:
        return default
    value = section.get(key)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(getattr(k, "__name__", str(k)) for k in kinds)
        raise ArtifactCorruptError(f"{where}.{key} is missing or not {names}; rebuild the artifact")
    return value


@dataclass(frozen=True)
class ModelInfo:
    """The ``model`` section: what encodes queries (``dim`` the stored, truncated width)."""

    name: str
    backend: str
    fingerprint: str
    native_dim: int
    dim: int
    bundled: bool
    alias: str | None = None
    id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "alias": self.alias, "id": self.id, "backend": self.backend,
                "fingerprint": self.fingerprint, "native_dim": self.native_dim,
                "dim": self.dim, "bundled": self.bundled}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ModelInfo:
        where = f"{where}: model"
        return cls(
            _get(data, "name", str, where), _get(data, "backend", str, where),
            _get(data, "fingerprint", str, where), _get(data, "native_dim", int, where),
            _get(data, "dim", int, where), _get(data, "bundled", bool, where),
            _get(data, "alias", (str, _NONE), where, None),
            _get(data, "id", (str, _NONE), where, None),
        )  # fmt: skip


@dataclass(frozen=True)
class IndexInfo:
    """The ``index`` section: kind, FAISS factory and class, IVF lists, the stored search
    breadth (``nprobe`` for IVF, ``ef_search`` for HNSW), re-rank, spill, early stop and
    the tuning tables that chose them."""

    type: str
    faiss_class: str
    rerank: int
    factory: str = ""
    nlist: int = 0
    nprobe: int | None = None
    ef_search: int | None = None
    spill: int = 1
    early_stop: EarlyStop | None = None
    nprobe_tuning: list[dict[str, Any]] = field(default_factory=list)
    ef_search_tuning: list[dict[str, Any]] = field(default_factory=list)
    early_stop_tuning: list[dict[str, Any]] = field(default_factory=list)
    vectors_stored: bool = False
    memory_budget: int | None = None
    nprobe_source: str | None = None

    @property
    def breadth(self) -> int | None:
        """The stored search breadth: an HNSW index's efSearch, else IVF nprobe (None for
        exact indexes)."""
        return self.nprobe if self.ef_search is None else self.ef_search

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["early_stop"] = None if self.early_stop is None else self.early_stop.to_dict()
        if self.nprobe_source is None:
            del data["nprobe_source"]
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str) -> IndexInfo:
        where = f"{where}: index"
        stop = _get(data, "early_stop", (dict, _NONE), where, None)  # absent in older ones
        try:
            early = None if stop is None else EarlyStop.from_dict(stop)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactCorruptError(f"{where}.early_stop: {exc}; rebuild the artifact") from None
        info = cls(
            type=_get(data, "type", str, where),
            faiss_class=_get(data, "faiss_class", str, where),
            rerank=_get(data, "rerank", int, where),
            factory=_get(data, "factory", str, where, ""),
            nlist=_get(data, "nlist", int, where, 0),
            nprobe=_get(data, "nprobe", (int, _NONE), where),
            ef_search=_get(data, "ef_search", (int, _NONE), where, None),
            spill=_get(data, "spill", int, where, 1),  # absent means 1
            early_stop=early,
            nprobe_tuning=_get(data, "nprobe_tuning", list, where, []),
            ef_search_tuning=_get(data, "ef_search_tuning", list, where, []),
            early_stop_tuning=_get(data, "early_stop_tuning", list, where, []),
            vectors_stored=_get(data, "vectors_stored", bool, where, False),
            memory_budget=_get(data, "memory_budget", (int, _NONE), where, None),
            nprobe_source=_get(data, "nprobe_source", (str, _NONE), where, None),
        )
        if (info.breadth is not None and info.breadth < 1) or info.spill < 1 or info.rerank < 0:
            raise ArtifactCorruptError(
                f"{where}: nprobe, ef_search and spill must be positive; rebuild the artifact"
            )
        return info


@dataclass(frozen=True)
class Counts:
    """The ``counts`` section: entities, vectors (rows) and the most vectors of one entity."""

    entities: int
    vectors: int
    max_vectors_per_entity: int

    def to_dict(self) -> dict[str, int]:
        return {"entities": self.entities, "vectors": self.vectors,
                "max_vectors_per_entity": self.max_vectors_per_entity}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Counts:
        where = f"{where}: counts"
        return cls(*(_get(data, key, int, where)
                     for key in ("entities", "vectors", "max_vectors_per_entity")))  # fmt: skip


@dataclass(frozen=True)
class Layers:
    """The ``layers`` section of a layered update: the base's hidden-mask file (or None),
    each layer's folder and mask file (oldest first) and the visible entities in all."""

    hidden: str | None
    segments: tuple[tuple[str, str | None], ...]
    entities: int

    @property
    def masks(self) -> list[str | None]:
        """The mask file of every segment, the base first."""
        return [self.hidden, *(mask for _, mask in self.segments)]

    def to_dict(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "entities": self.entities,
                "segments": [{"dir": d, "hidden": m} for d, m in self.segments]}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Layers:
        where = f"{where}: layers"
        segments = tuple(
            (_get(entry, "dir", str, f"{where}.segments"),
             _get(entry, "hidden", (str, _NONE), f"{where}.segments", None))
            for entry in _get(data, "segments", list, where)
        )  # fmt: skip
        hidden = _get(data, "hidden", (str, _NONE), where, None)
        return cls(hidden, segments, _get(data, "entities", (int, _NONE), where, None))


#: The fields that shape a query vector: every layer and shard must agree on them.
QUERY_FIELDS = (
    "model.fingerprint", "model.dim", "normalizer", "lexical", "index_dim", "metric",
    "max_text_chars",
)  # fmt: skip
#: Top-level keys that are written only when set.
_OPTIONAL = ("created_at", "columns", "build_seconds", "build_stages", "calibration",
             "training", "matcher", "lineage", "layers", "layer")  # fmt: skip


@dataclass(frozen=True)
class Manifest:
    """An artifact's manifest (see docs/artifact-format.md). ``files``: {relative path:
    {"size", "sha256"}}; ``extra``: top-level keys this version does not know, kept as
    they are."""

    model: ModelInfo
    normalizer: NormalizerSettings
    lexical: LexicalSettings | None
    index: IndexInfo
    counts: Counts
    files: dict[str, dict[str, Any]]
    index_dim: int
    max_text_chars: int = 2048
    metric: str = "inner_product"
    vectors_normalized: bool = True
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    library_version: str = __version__
    faiss_version: str = ""
    created_at: str | None = None
    columns: dict[str, Any] | None = None
    build_seconds: float | None = None
    build_stages: dict[str, float] | None = None
    calibration: Calibration | None = None
    training: dict[str, Any] | None = None
    matcher: dict[str, Any] | None = None
    lineage: dict[str, Any] | None = None
    layers: Layers | None = None
    layer: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def training_mode(self) -> str:
        """How the model was trained: the training record's mode, or "zero-shot"."""
        return (self.training or {}).get("mode", "zero-shot")

    @property
    def default_scorer(self) -> str:
        """The scorer ``match`` uses by default: the training record's, else "index"."""
        return (self.training or {}).get("default_scorer", "index")

    def size(self) -> int:
        """Bytes of every listed file."""
        return sum(record["size"] for record in self.files.values())

    def query_fields(self) -> dict[str, Any]:
        """The :data:`QUERY_FIELDS` values, by name (JSON values, comparable)."""
        values = (
            self.model.fingerprint, self.model.dim, self.normalizer.to_dict(),
            None if self.lexical is None else self.lexical.to_dict(), self.index_dim,
            self.metric, self.max_text_chars,
        )  # fmt: skip
        return dict(zip(QUERY_FIELDS, values, strict=True))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written as ``manifest.json``."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        for name in ("model", "index", "counts", "layers", "calibration", "normalizer"):
            if data[name] is not None:
                data[name] = data[name].to_dict()
        data["lexical"] = None if self.lexical is None else self.lexical.to_dict()
        for name in _OPTIONAL:
            if data[name] is None:
                del data[name]
        return {**self.extra, **data}

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST) -> Manifest:
        """Check and read a manifest object; :class:`ArtifactCorruptError` or
        :class:`ArtifactIncompatibleError` name the fault and ``where``."""
        check_header(data, FORMAT, FORMAT_VERSION, where)
        _get(data, "faiss_version", str, where)
        known = {f.name for f in fields(cls)}
        try:
            lexical = data.get("lexical")
            manifest = cls(
                model=ModelInfo.from_dict(data.get("model"), where),
                normalizer=NormalizerSettings.from_dict(_get(data, "normalizer", dict, where)),
                lexical=None if not lexical else LexicalSettings.from_dict(lexical),
                index=IndexInfo.from_dict(data.get("index"), where),
                counts=Counts.from_dict(data.get("counts"), where),
                files=_get(data, "files", dict, where),
                calibration=_calibration(data.get("calibration"), where),
                layers=None if not data.get("layers") else Layers.from_dict(data["layers"], where),
                index_dim=_get(data, "index_dim", int, where, 0),
                **{key: data[key] for key in known - _PARSED if key in data},
                extra={key: value for key, value in data.items() if key not in known},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactCorruptError(f"{where}: malformed field ({exc!r})") from None
        if manifest.max_text_chars < 1 or not isinstance(manifest.max_text_chars, int):
            raise ArtifactCorruptError(f"{where}: max_text_chars must be a positive int")
        return manifest

    def replace(self, **changes: Any) -> Manifest:
        """A copy with ``changes`` applied: field names set the field, other names go to
        :attr:`extra` (written as top-level keys)."""
        known = {f.name for f in fields(self)} - {"extra"}
        extra = {key: value for key, value in changes.items() if key not in known}
        fields_changed = {key: value for key, value in changes.items() if key in known}
        return replace(self, **fields_changed, extra={**self.extra, **extra})


_PARSED = {"model", "normalizer", "lexical", "index", "counts", "files", "calibration",
           "layers", "index_dim", "extra"}  # fmt: skip


def _calibration(section: Any, where: str) -> Calibration | None:
    """The ``calibration`` section read (absent in artifacts of earlier versions)."""
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ArtifactCorruptError(f"{where}: calibration is not a JSON object")
    if section.get("version") != CALIBRATION_VERSION:
        raise ArtifactIncompatibleError(
            f"{where}: confidence model version {section.get('version')!r}; this library "
            f"reads version {CALIBRATION_VERSION}: rebuild the artifact with it, or use the "
            "library version that wrote it"
        )
    try:
        return Calibration.from_dict(section)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactCorruptError(f"{where}: calibration: {exc}; rebuild the artifact") from None


def check_header(data: Any, kind: str, newest: int, where: str) -> None:
    """Check a JSON object's ``format`` (must be ``kind``) and ``format_version`` (1 to
    ``newest``); corrupt or incompatible errors name ``where``."""
    if not isinstance(data, dict):
        raise ArtifactCorruptError(f"{where}: the manifest must be a JSON object")
    found = _get(data, "format", str, where)
    version = _get(data, "format_version", int, where)
    if found != kind:
        raise ArtifactIncompatibleError(f"{where}: format {found!r} is not {kind!r}")
    if version > newest:
        raise ArtifactIncompatibleError(
            f"{where}: format version {version} is newer than this library reads ({newest}); "
            "upgrade novelentitymatcher-faiss"
        )
    if version < 1:
        raise ArtifactCorruptError(f"{where}: invalid format version {version}")


def new_manifest(**values: Any) -> Manifest:
    """A manifest for an artifact being written now: this library's and FAISS's versions
    and the time stamp, plus ``values`` (field names)."""
    import faiss

    return Manifest(**{"faiss_version": faiss.__version__, "created_at": utc_stamp(), **values})


def utc_stamp() -> str:
    """Now, as the manifest's ``created_at`` records it (UTC, whole seconds, ISO 8601)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_json(path: Path, what: str) -> Any:
    """A small JSON file's content; :class:`ArtifactCorruptError` names ``path`` and says
    what it was meant to be."""
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ArtifactCorruptError(f"{path}: {what} is implausibly large")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactCorruptError(
            f"{path}: not valid JSON ({exc}); rebuild the artifact"
        ) from None


def read_manifest(directory: str | Path) -> Manifest:
    """Read and check ``directory/manifest.json``; raises an :class:`ArtifactError` subclass."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactMissingError(f"{directory}: no artifact directory here; build one first")
    path = directory / MANIFEST
    if not path.is_file() or path.is_symlink():
        raise ArtifactMissingError(f"{path}: manifest missing; this is not a complete artifact")
    manifest = Manifest.from_dict(read_json(path, "the manifest"), str(path))
    _check_faiss_version(path, manifest.faiss_version)
    return manifest


def write_manifest(directory: Path, manifest: Manifest | dict[str, Any]) -> None:
    """Write ``manifest.json`` (UTF-8, sorted keys) and fsync it."""
    data = manifest.to_dict() if isinstance(manifest, Manifest) else manifest
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False).encode("utf-8")
    with open(directory / MANIFEST, "wb") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _check_faiss_version(path: Path, written_by: str) -> None:
    import faiss

    def major_minor(version: str) -> tuple[int, int]:
        try:
            major, minor = version.split(".")[:2]
            return int(major), int(minor)
        except ValueError:
            raise ArtifactCorruptError(f"{path}: invalid faiss_version {version!r}") from None

    if major_minor(written_by) > major_minor(faiss.__version__):
        raise ArtifactIncompatibleError(
            f"{path}: written by faiss {written_by}, newer than the installed faiss "
            f"{faiss.__version__}; upgrade faiss-cpu to open it"
        )


@dataclass(frozen=True)
class ShardSet:
    """A shard set's ``shards.json``: the shard folder names (plain names inside the set's
    folder), and what the distributed build recorded."""

    shards: tuple[str, ...]
    entities: int
    index_type: str
    nlist: int | None
    built_with: str
    build_seconds: float
    library_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return {"format": SET_FORMAT, "format_version": SET_FORMAT_VERSION,
                "library_version": self.library_version, "shards": list(self.shards),
                "entities": self.entities, "index_type": self.index_type, "nlist": self.nlist,
                "built_with": self.built_with, "build_seconds": self.build_seconds}  # fmt: skip

    def write(self, folder: Path) -> None:
        """Write ``folder / SET_FILE``."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        (folder / SET_FILE).write_text(text, encoding="utf-8")

    @classmethod
    def read(cls, folder: Path) -> ShardSet:
        """Read and check ``folder / SET_FILE``; the error names what is wrong."""
        listing = folder / SET_FILE
        where = str(listing)
        try:
            data = json.loads(listing.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ArtifactCorruptError(f"{listing}: unreadable shard list ({exc!r})") from None
        check_header(data, SET_FORMAT, SET_FORMAT_VERSION, where)
        names = _get(data, "shards", list, where)
        bad = [n for n in names
               if not isinstance(n, str) or Path(n).name != n or n in ("", ".", "..")]  # fmt: skip
        if bad or not names:
            raise ArtifactCorruptError(f"{listing}: shard names must be plain folder names: {bad}")
        return cls(
            tuple(names), data.get("entities", 0), data.get("index_type", ""),
            data.get("nlist"), data.get("built_with", ""), data.get("build_seconds", 0.0),
            data.get("library_version", ""),
        )  # fmt: skip
