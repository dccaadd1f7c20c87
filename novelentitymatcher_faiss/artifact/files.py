"""The on-disk artifact: file names, atomic writes and integrity checks (the manifest's
content is :mod:`.manifest`'s).

An artifact is a directory::

    manifest.json            format version, versions, model, settings, counts, file hashes
    index.faiss              the FAISS index (inner product on L2-normalized vectors)
    row_entity.npy           int64 (n_vectors,): vector row -> entity row
    texts.bin (+ .offsets)   the original name/alias text of every vector row
    ids.bin (+ .offsets)     the id of every entity row
    entities.jsonl (+ .offsets)  one JSON record per entity row (id, name, aliases, metadata)
    vectors.npy              optional float32 (n_vectors, dim), for exact re-rank and updates
    model/                   optional bundled model folder

Nothing is pickled. Every file is listed in the manifest with its size and sha256.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import (
    ArtifactCorruptError,
    ArtifactError,
    ArtifactExistsError,
    ArtifactMissingError,
)

MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
#: The HNSW graph over an IVF index's centroids that early-stop stages search (optional).
STAGE_GRAPH_FILE = "stage_graph.faiss"
ROW_ENTITY_FILE = "row_entity.npy"
VECTORS_FILE = "vectors.npy"
MODEL_DIR = "model"
#: ``verify="fast"`` still checks every sha256 when the whole artifact is this small.
FAST_HASH_MAX_BYTES = 32 * 1024 * 1024


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def list_files(directory: Path) -> list[str]:
    """Relative POSIX paths of every regular file under ``directory``, sorted."""
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


def file_records(
    directory: Path, reuse: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size": int, "sha256": str}}`` for every file but the manifest.

    ``reuse``: known records (of hard-linked, unchanged files), taken when the size agrees
    instead of hashing the file again.
    """
    reuse = reuse or {}
    records = {}
    for name in list_files(directory):
        if name == MANIFEST:
            continue
        size = (directory / name).stat().st_size
        known = reuse.get(name)
        if known is not None and known.get("size") == size:
            records[name] = known
        else:
            records[name] = {"size": size, "sha256": sha256_file(directory / name)}
    return records


def member(directory: Path, name: str) -> Path:
    """Resolve a manifest file name inside ``directory``, refusing escapes and symlinks."""
    rel = Path(name)
    if not name or rel.is_absolute() or ".." in rel.parts or "\\" in name:
        raise ArtifactCorruptError(
            f"{directory / MANIFEST}: file name {name!r} escapes the artifact directory"
        )
    path = directory / rel
    for parent in [path, *path.parents]:
        if parent == directory:
            break
        if parent.is_symlink():
            raise ArtifactCorruptError(f"{path}: symbolic links are not allowed inside an artifact")
    return path


def check_files(directory: Path, files: dict[str, Any], *, full: bool) -> None:
    """Check every listed file exists with its recorded size, and its sha256 when ``full``.

    Artifacts of at most ``FAST_HASH_MAX_BYTES`` in all are always hashed (it takes a few
    milliseconds), so damage to a small artifact never goes unnoticed. Files present on
    disk but absent from the manifest are reported too.
    """
    directory = Path(directory)
    checked = []
    for name, record in files.items():
        path = member(directory, name)
        if not isinstance(record, dict) or not isinstance(record.get("size"), int):
            raise ArtifactCorruptError(f"{directory / MANIFEST}: bad file record for {name!r}")
        if not path.is_file():
            raise ArtifactMissingError(f"{path}: listed in the manifest but missing")
        size = path.stat().st_size
        if size != record["size"]:
            raise ArtifactCorruptError(
                f"{path}: size {size} bytes, manifest says {record['size']}; "
                "the file is truncated or replaced, rebuild or re-copy the artifact"
            )
        checked.append((path, record))
    if full or sum(record["size"] for _, record in checked) <= FAST_HASH_MAX_BYTES:
        for path, record in checked:
            if sha256_file(path) != record.get("sha256"):
                raise ArtifactCorruptError(
                    f"{path}: sha256 does not match the manifest; the file is damaged, "
                    "rebuild or re-copy the artifact"
                )
    extra = sorted(set(list_files(directory)) - set(files) - {MANIFEST})
    if extra:
        raise ArtifactCorruptError(
            f"{directory}: unexpected file(s) {extra[:5]} not listed in the manifest; "
            "remove them or re-copy the artifact"
        )


def open_faiss_index(path: Path, *, mmap: bool = True):  # noqa: ANN201 - a faiss.Index
    """Open a FAISS index file read-only, memory-mapped with ``IO_FLAG_MMAP_IFC`` by default.

    FAISS read errors become :class:`ArtifactCorruptError` naming ``path``.
    """
    import faiss

    flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else faiss.IO_FLAG_READ_ONLY
    try:
        return faiss.read_index(str(path), flags)
    except (RuntimeError, MemoryError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ArtifactCorruptError(f"{path}: FAISS cannot read this index ({reason})") from None


def fsync_tree(directory: Path) -> None:
    """fsync every file and folder under ``directory`` (and the folder itself)."""
    for root, _dirs, names in os.walk(directory):
        for name in names:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_directory(target: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temp dir beside ``target``; on success fsync it and swap it into place.

    On any error the temp dir is removed and an existing ``target`` is left untouched.
    An existing ``target`` is replaced only when ``overwrite`` is true.
    """
    target = Path(target).absolute()
    if target.exists() and not overwrite:
        raise ArtifactExistsError(f"{target}: already exists; pass overwrite=True to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        _swap_into_place(tmp, target, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_into_place(tmp: Path, target: Path, *, overwrite: bool) -> None:
    if not target.exists():
        try:
            os.rename(tmp, target)  # fails if another writer created target meanwhile
        except OSError as exc:
            if not overwrite:
                raise ArtifactExistsError(f"{target}: created by another build meanwhile") from exc
        else:
            _fsync_dir(target.parent)
            return
    if not overwrite:
        raise ArtifactExistsError(f"{target}: already exists; pass overwrite=True to replace it")
    if not target.is_dir() or target.is_symlink():
        raise ArtifactError(f"{target}: exists and is not an artifact directory; not replacing it")
    if _rename_exchange(tmp, target):
        # tmp now holds the previous artifact; readers that mapped it keep their mappings.
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(target.parent)


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return result == 0
