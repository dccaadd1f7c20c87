"""Turn text into unit-length float32 vectors with a model2vec or sentence-transformers model.

``load_encoder`` resolves a model name (see :mod:`sources`), picks the backend, and returns an
:class:`Encoder` whose ``encode`` gives C-contiguous ``float32`` arrays of shape ``(n, dim)``:
truncated to ``dim`` first (Matryoshka), then L2-normalized, so that inner product is cosine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from novelentitymatcher_faiss.errors import (
    FingerprintMismatchError,
    ModelError,
    QueryError,
)
from novelentitymatcher_faiss.models.registry import ModelSpec
from novelentitymatcher_faiss.models.sources import SOURCE_DIR, cache_dir, resolve_model
from novelentitymatcher_faiss.models.static_model import (
    StaticParts,
    load_static_parts,
    safetensors_header,
)

_FINGERPRINT_VERSION = b"nem-faiss-fingerprint-v1\n"
_SKIP_NAMES = {"desktop.ini", "thumbs.db"}
_SKIP_PREFIXES = ("readme", "license", "licence", "notice", "attribution", "copying")


# ---------------------------------------------------------------------------- fingerprint


def fingerprint_files(path: str | Path) -> list[str]:
    """The files a fingerprint covers, as sorted relative POSIX paths.

    Skips hidden files and folders, the ``_source/`` folder that model sources add, model
    cards (README*), licence and attribution files, and desktop.ini / Thumbs.db.
    """
    root = Path(path)
    if not root.is_dir():
        raise ModelError(f"cannot fingerprint {root}: not a folder")
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = [
            d for d in dirnames
            if not d.startswith(".") and not (rel_dir == Path(".") and d == SOURCE_DIR)
        ]  # fmt: skip
        for name in filenames:
            low = name.lower()
            if name.startswith(".") or low in _SKIP_NAMES or low.startswith(_SKIP_PREFIXES):
                continue
            found.append((rel_dir / name).as_posix())
    return sorted(found)


def fingerprint_dir(path: str | Path) -> str:
    """Hex sha256 over a model folder's weight, tokenizer and config files.

    Covers each file's relative path and content (see :func:`fingerprint_files` for what is
    left out); independent of directory listing order and of where the folder lives. A
    folder fingerprinted before, whose files have the same paths, sizes, modification
    times and inodes, reuses the stored result (:data:`STAMPS_FILE` in the cache dir), as
    git's index does (files modified in the last two seconds are never remembered):
    hashing potion-8m's 30 MB costs a cold start about 25 ms.
    """
    root = Path(path)
    files = fingerprint_files(root)
    if not files:
        raise ModelError(f"cannot fingerprint {root}: it holds no model files")
    key, stamp = str(root.resolve()), _stamp(root, files)
    stamps = _read_stamps()
    known = stamps.get(key)
    if isinstance(known, dict) and known.get("stamp") == stamp:
        return str(known["fingerprint"])
    digest = hashlib.sha256(_FINGERPRINT_VERSION)
    for rel in files:
        with open(root / rel, "rb") as fh:
            file_hash = hashlib.file_digest(fh, "sha256").digest()
        digest.update(rel.encode("utf-8") + b"\0" + file_hash)
    found = digest.hexdigest()
    # a file written just now could change again within the same clock tick, its size
    # unchanged: such a folder is not remembered
    settled = time.time_ns() - _RACY_NS
    if all(mtime < settled for _, _, mtime, _ in stamp):
        _write_stamps({**stamps, key: {"stamp": stamp, "fingerprint": found}})
    return found


#: Fingerprints of model folders with the stat of their files, in the cache dir (JSON).
STAMPS_FILE = "fingerprints.json"
_STAMPS_VERSION = 1
#: Folders remembered at most (the oldest are dropped first).
_MAX_STAMPS = 64
#: Files modified less than this long ago (ns) are not remembered ("racily clean" in git).
_RACY_NS = 2_000_000_000


def _stamp(root: Path, files: list[str]) -> list[list[Any]]:
    """[relative path, size, mtime_ns, inode] of each file."""
    out = []
    for rel in files:
        info = (root / rel).stat()
        out.append([rel, info.st_size, info.st_mtime_ns, info.st_ino])
    return out


def _read_stamps() -> dict[str, Any]:
    """The stored fingerprints by folder; empty when the file is missing, unreadable or of
    another version (it is a cache: the fingerprint is then computed)."""
    try:
        with open(cache_dir() / STAMPS_FILE, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    ok = isinstance(data, dict) and data.get("version") == _STAMPS_VERSION
    folders = data.get("folders") if ok else None
    return folders if isinstance(folders, dict) else {}


def _write_stamps(folders: dict[str, Any]) -> None:
    """Store ``folders`` atomically (temp file, rename); a cache dir that cannot be written
    only costs the next open a fingerprint."""
    kept = dict(list(folders.items())[-_MAX_STAMPS:])
    target = cache_dir() / STAMPS_FILE
    tmp = target.with_name(f".{STAMPS_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"version": _STAMPS_VERSION, "folders": kept}, fh)
        os.replace(tmp, target)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


# ---------------------------------------------------------------------------- backends


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _safetensors_keys(path: Path) -> set[str]:
    """Tensor names in a safetensors file, read from its header only."""
    read = safetensors_header(path)
    return set() if read is None else {k for k in read[0] if k != "__metadata__"}


def detect_backend(path: str | Path) -> str:
    """Guess the backend of a model folder: model2vec, then static ST, then dynamic ST."""
    root = Path(path)
    config = _read_json(root / "config.json")
    if isinstance(config, dict) and config.get("model_type") == "model2vec":
        return "model2vec"
    if (root / "tokenizer.json").is_file() and "embeddings" in _safetensors_keys(
        root / "model.safetensors"
    ):
        return "model2vec"
    modules = _read_json(root / "modules.json")
    if isinstance(modules, list) and modules and all(isinstance(m, dict) for m in modules):
        first = min(modules, key=lambda m: m.get("idx", 0))
        if str(first.get("type", "")).rsplit(".", 1)[-1] == "StaticEmbedding":
            return "static"
        return "sentence-transformers"
    if isinstance(config, dict) and ("architectures" in config or "model_type" in config):
        return "sentence-transformers"
    raise ModelError(
        f"{root} does not look like a model2vec, sentence-transformers or transformers model "
        "folder (no model2vec config.json, modules.json or transformers config.json)"
    )


def _load_backend(backend: str, path: Path, trust_remote_code: bool) -> Any:
    try:
        if backend == "model2vec":
            parts = load_static_parts(path)  # the plain layout, opened without model2vec
            if parts is not None:
                return parts
            from model2vec import StaticModel

            return StaticModel.from_pretrained(path)
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(
            str(path), device="cpu", local_files_only=True, trust_remote_code=trust_remote_code
        )
    except Exception as exc:  # any loader failure is a model problem for the caller
        raise ModelError(f"cannot load {path} as a {backend} model: {exc}") from exc
    if backend == "static":
        first = next(iter(model.children()), None)
        if first is None or "static" not in type(first).__name__.lower():
            name = type(first).__name__ if first is not None else "nothing"
            raise ModelError(
                f"{path} was expected to be a static sentence-transformers model, but its first "
                f"module is {name}"
            )
    return model


def _native_dim(backend: str, model: Any) -> int:
    if backend == "model2vec":
        return int(model.dim)
    dim = model.get_embedding_dimension()
    if dim is None:
        dim = model.encode(["a"], convert_to_numpy=True).shape[1]
    return int(dim)


# ---------------------------------------------------------------------------- encoder


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalization into a new C-contiguous float32 array of the same shape.

    Rows that are all zero (or hold NaN/inf) come back as zero rows, never NaN.
    """
    out = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if out.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {out.shape}")
    bad = ~np.isfinite(out).all(axis=1)
    out[bad] = 0.0
    return normalize_rows(out)


def normalize_rows(out: np.ndarray) -> np.ndarray:
    """Divide each row of float32 (n, d) ``out`` by its L2 norm, in place; zero rows stay.

    The arithmetic of ``np.linalg.norm(axis=1)``, without its call overhead.
    """
    norms = np.sqrt(np.add.reduce(out * out, axis=1, keepdims=True))
    np.divide(out, norms, out=out, where=norms > 0)
    return out


_STATIC_PARTS = ("tokenizer", "embedding", "token_mapping", "weights", "unk_token_id",
                 "max_length", "median_token_length")  # fmt: skip


def _has_static_parts(model: Any) -> bool:
    """True when a model2vec ``StaticModel`` (or :class:`~.static_model.StaticParts`)
    exposes what :func:`static_mean` reads (not asking StaticParts: its median token
    length is read lazily)."""
    return isinstance(model, StaticParts) or all(hasattr(model, n) for n in _STATIC_PARTS)


#: Up to this many texts, :func:`static_mean` works text by text: a few small numpy calls
#: beat the batch path's fixed cost, and ``Tokenizer.encode`` skips the thread pool.
_SMALL_BATCH = 8


def static_mean(model: Any, texts: list[str]) -> np.ndarray:
    """float32 (n, native_dim): model2vec's sentence vector (the mean of the token vectors,
    unknown tokens dropped, at most ``max_length`` tokens), before normalization.

    The arithmetic of ``StaticModel.encode``, without its per-call overhead (progress bar,
    tokenizer reconfiguration, per-length buckets): a single query costs about a fifth.
    A text with no known token gives a zero row.
    """
    limit, unk, tokenizer = model.max_length, model.unk_token_id, model.tokenizer
    # model2vec cuts characters first (to limit x the median token length, at least limit
    # characters), then tokens; texts of at most limit characters are never cut
    if limit is not None and any(len(text) > limit for text in texts):
        chars = limit * model.median_token_length
        texts = [text[:chars] for text in texts]
    if len(texts) <= _SMALL_BATCH:
        encodings = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    else:
        encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    ids = [encoding.ids[:limit] for encoding in encodings]
    if unk is not None:
        ids = [[token for token in row if token != unk] if unk in row else row for row in ids]
    out = np.zeros((len(ids), model.embedding.shape[1]), dtype=np.float32)
    if len(ids) <= _SMALL_BATCH:
        for i, row in enumerate(ids):
            if row:
                np.divide(np.add.reduce(_token_vectors(model, row), axis=0), len(row), out=out[i])
        return out
    by_length: dict[int, list[int]] = {}
    for i, row in enumerate(ids):
        if row:
            by_length.setdefault(len(row), []).append(i)
    for length, members in by_length.items():  # one gather per token count
        tokens = np.array([ids[i] for i in members], dtype=np.int64)
        out[members] = np.add.reduce(_token_vectors(model, tokens), axis=1) / length
    return out


def _token_vectors(model: Any, ids: Any) -> np.ndarray:
    """float32 (*ids.shape, native_dim): the (weighted) embedding rows of token ``ids``."""
    rows = ids if model.token_mapping is None else np.asarray(model.token_mapping)[ids]
    vectors = np.asarray(model.embedding[rows], dtype=np.float32)
    if model.weights is not None:
        vectors = vectors * np.asarray(model.weights, dtype=np.float32)[ids][..., None]
    return vectors


@dataclass(eq=False)
class Encoder:
    """A loaded embedding model and the output width it was asked for.

    ``native_dim`` is the model's own width; ``dim`` (<= ``native_dim``) is the width of
    :meth:`encode`'s output. ``fingerprint`` identifies the model files (see
    :func:`fingerprint_dir`). ``model`` is the underlying model: the
    :class:`~.static_model.StaticParts` of a plain model2vec folder, else a model2vec
    ``StaticModel`` or a ``SentenceTransformer``.
    """

    model: Any = field(repr=False)
    backend: str
    path: Path
    model_name: str
    spec: ModelSpec
    native_dim: int
    dim: int
    fingerprint: str
    # Tokenizers are mutated inside encode (model2vec sets truncation on every call), and a
    # Rust tokenizer used by two threads at once fails with "Already borrowed".
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # whether encode goes through :func:`static_mean` (decided once, not per call)
    _static: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._static = self.backend == "model2vec" and _has_static_parts(self.model)

    def encode(
        self, texts: Sequence[str], batch_size: int = 1024, show_progress: bool = False
    ) -> np.ndarray:
        """Encode ``n`` texts into a C-contiguous float32 array of shape ``(n, dim)``.

        Each row is the model's vector truncated to ``dim`` and then L2-normalized; a text the
        model maps to the zero vector (e.g. no known tokens) gives a zero row.
        """
        if isinstance(texts, (str, bytes)):
            raise QueryError("encode() takes a sequence of strings, not a single string")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise QueryError(f"batch_size must be a positive int, got {batch_size!r}")
        items = list(texts)
        for i, text in enumerate(items):
            if not isinstance(text, str):
                raise QueryError(f"text {i} is a {type(text).__name__}, not a str")
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            raw = np.asarray(self._encode_raw(items, batch_size, show_progress))
        if raw.shape != (len(items), self.native_dim):
            raise ModelError(
                f"{self.model_name} returned shape {raw.shape}, "
                f"expected {(len(items), self.native_dim)}"
            )
        if self._static and self.dim == self.native_dim:  # fresh float32 of finite means
            return normalize_rows(raw)
        return l2_normalize(raw[:, : self.dim])

    def _encode_raw(self, items: list[str], batch_size: int, show_progress: bool) -> Any:
        """(n, native_dim) vectors of ``items`` before truncation and normalization."""
        if self._static:
            starts: Any = range(0, len(items), batch_size)
            if show_progress:  # a disabled tqdm still costs more than encoding one text
                from tqdm.auto import tqdm

                starts = tqdm(starts, desc="encode", unit="batch")
            parts = [static_mean(self.model, items[i : i + batch_size]) for i in starts]
            return parts[0] if len(parts) == 1 else np.concatenate(parts)
        if self.backend == "model2vec":
            return self.model.encode(
                items,
                batch_size=batch_size,
                show_progress_bar=show_progress,
                use_multiprocessing=False,
            )
        return self.model.encode(
            items,
            batch_size=batch_size,
            show_progress_bar=show_progress,
            convert_to_numpy=True,
            normalize_embeddings=False,
        )

    def verify_fingerprint(self, expected: str) -> None:
        """Raise :class:`FingerprintMismatchError` unless the model files match ``expected``."""
        if expected != self.fingerprint:
            raise FingerprintMismatchError(
                f"model {self.model_name} at {self.path} has fingerprint "
                f"{self.fingerprint[:16]}..., but {expected[:16]}... was expected: these are "
                "different model files, so its vectors would not match the stored ones. Load "
                "the model the index was built with, or rebuild the index."
            )


def _check_dim(embedding_dim: int | None, native: int, spec: ModelSpec, name: str) -> int:
    if embedding_dim is None:
        return native
    if not isinstance(embedding_dim, int) or isinstance(embedding_dim, bool):
        raise ModelError(f"embedding_dim must be an int, got {embedding_dim!r}")
    if not 1 <= embedding_dim <= native:
        raise ModelError(
            f"embedding_dim={embedding_dim} is out of range for {name}: "
            f"it must be between 1 and the model's native dimension {native}"
        )
    if embedding_dim < native and not spec.mrl:
        warnings.warn(
            f"{name} is not a Matryoshka (MRL) model: truncating its {native}-dim vectors to "
            f"{embedding_dim} dims loses more quality than with an MRL model",
            UserWarning,
            stacklevel=3,
        )
    return embedding_dim


def load_encoder(
    model: str = "default", embedding_dim: int | None = None, *, show_progress: bool = True
) -> Encoder:
    """Resolve ``model`` (alias, hub id or folder), load it, and return an :class:`Encoder`.

    ``embedding_dim`` truncates output vectors to that many leading dims (Matryoshka); it
    must lie in ``1..native_dim``. Truncating a model not trained for it warns.
    """
    resolved = resolve_model(model, show_progress=show_progress)
    spec = resolved.spec
    backend = spec.backend if spec is not None else detect_backend(resolved.path)
    trust = spec.trust_remote_code if spec is not None else False
    loaded = _load_backend(backend, resolved.path, trust)
    native = _native_dim(backend, loaded)
    if spec is None:
        spec = ModelSpec(
            alias=model,
            model_id=model if resolved.source != "local" else str(resolved.path),
            backend=backend,
            native_dim=native,
            mrl=False,
            trainable=backend == "sentence-transformers",
            language="unknown",
        )
    elif spec.native_dim != native:
        raise ModelError(
            f"model {spec.alias} is registered with native_dim={spec.native_dim}, but the files "
            f"at {resolved.path} give {native}-dim vectors"
        )
    name = spec.alias if resolved.spec is not None else model
    dim = _check_dim(embedding_dim, native, spec, name)
    return Encoder(
        model=loaded,
        backend=backend,
        path=resolved.path,
        model_name=name,
        spec=spec,
        native_dim=native,
        dim=dim,
        fingerprint=fingerprint_dir(resolved.path),
    )
