"""Catalog changes without a full re-encode: a new artifact from an old one plus a diff.

Unchanged entities keep their vector rows: copied from the old ``vectors.npy``, rebuilt from
a flat index, or, for IVF indexes with plain inverted lists (``ivf``, ``ivf-sq8``), kept as
their stored codes in the same lists (no re-assignment). Only added entities are encoded,
with the old artifact's model, normalizer and lexical settings. The IVF quantizer, codes'
training and nprobe carry over; the new manifest records its lineage. The old artifact is
never modified.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from . import __version__
from .arrays import load_array
from .artifact import (
    INDEX_FILE,
    MANIFEST,
    MODEL_DIR,
    VECTORS_FILE,
    atomic_directory,
    file_records,
    open_faiss_index,
    sha256_file,
    write_manifest,
)
from .build import CatalogWriter, _open_fresh
from .catalog import read_catalog
from .encoders import Encoder
from .errors import ArtifactError, ArtifactExistsError, CatalogError
from .match_index import MatchIndex, load_index
from .search import iter_chunks

_CHUNK = 65536


def update_index(
    path: str | Path,
    out: str | Path,
    *,
    add: Iterable[Mapping[str, Any]] | str | Path | None = None,
    remove: Iterable[str] = (),
    overwrite: bool = False,
    batch_size: int = 1024,
    show_progress: bool = True,
    encoder: Encoder | None = None,
) -> MatchIndex:
    """Write to ``out`` the artifact at ``path`` with entities ``remove``d and ``add``ed.

    ``add`` takes what :func:`~novelentitymatcher_faiss.build_index` takes (entity dicts or
    a CSV/JSONL/JSON path); an added id that already exists replaces that entity. ``remove``
    lists ids that must exist. ``out`` must differ from ``path``; it is written atomically
    and replaces an existing artifact only with ``overwrite=True``. Returns the new artifact,
    opened. ``encoder`` reuses an already loaded encoder (its fingerprint must match).
    """
    started = time.perf_counter()
    old = load_index(path, encoder=encoder)
    source, target = Path(path).resolve(), Path(out).resolve()
    if source == target:
        raise ArtifactExistsError(
            f"{out}: the output must differ from the artifact being updated (it stays readable)"
        )
    added = list(read_catalog(add)) if add is not None else []
    dropped, replaced = _dropped_rows(old, remove, added)
    if not added and not dropped.any():
        raise CatalogError("nothing to update: give entities to add or ids to remove")
    if not added and dropped.all():
        raise CatalogError("the update would remove every entity; an artifact needs one")
    index_kind = _index_kind(old)
    encoder = old.encoder  # loaded and fingerprint-checked before anything is written
    with atomic_directory(target, overwrite=overwrite) as tmp:
        writer = CatalogWriter(tmp, encoder, old.lexical, old.normalizer, batch_size)
        kept_rows = _copy_kept(old, dropped, writer)
        for entity in tqdm(added, desc="encoding added entities", unit=" entities",
                           disable=not show_progress or not added):  # fmt: skip
            writer.add(entity)
        counts = writer.close()
        vectors = load_array(tmp / VECTORS_FILE, np.float32, ndim=2)
        new_vectors = vectors[len(vectors) - (counts["vectors"] - int(kept_rows.sum())) :]
        index = _new_index(old, index_kind, kept_rows, vectors, new_vectors)
        import faiss

        faiss.write_index(index, str(tmp / INDEX_FILE))
        del index, vectors, new_vectors
        if old.vectors is None:
            (tmp / VECTORS_FILE).unlink()
        if old.manifest["model"].get("bundled"):
            shutil.copytree(old.path / MODEL_DIR, tmp / MODEL_DIR)
        changes = {"added_entities": len(added) - replaced, "replaced_entities": replaced,
                   "removed_entities": int(dropped.sum()) - replaced}  # fmt: skip
        manifest = _manifest(old, counts, kept_rows, changes, started)
        manifest["files"] = file_records(tmp)
        write_manifest(tmp, manifest)
    return _open_fresh(target)


def _dropped_rows(
    old: MatchIndex, remove: Iterable[str], added: list[dict[str, Any]]
) -> tuple[np.ndarray, int]:
    """bool (n_entities,): entities removed, or replaced by an added entity of the same id;
    and how many were replaced."""
    if isinstance(remove, str):
        raise CatalogError("remove takes a list of ids, not a single string")
    remove = list(remove)
    bad = [entity_id for entity_id in remove if not isinstance(entity_id, str)]
    if bad:
        raise CatalogError(f"ids to remove must be strings, got {bad[0]!r}")
    rows = [old.row_of(entity_id) for entity_id in remove]
    missing = [entity_id for entity_id, row in zip(remove, rows, strict=True) if row is None]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise CatalogError(f"cannot remove {len(missing)} id(s) not in {old.path}: {shown}")
    dropped = np.zeros(old.n_entities, dtype=bool)
    dropped[rows] = True
    replaced = [row for row in (old.row_of(e["id"]) for e in added) if row is not None]
    dropped[replaced] = True
    return dropped, len(replaced)


def _index_kind(old: MatchIndex) -> str:
    """How the new index is made: "flat", "ivf-lists" (codes copied) or "ivf-readd"."""
    import faiss

    if isinstance(old.index, faiss.IndexFlat):
        return "flat"
    try:
        ivf = faiss.extract_index_ivf(old.index)
    except RuntimeError:
        ivf = None
    lists = None if ivf is None else faiss.downcast_InvertedLists(ivf.invlists)
    if isinstance(lists, faiss.ArrayInvertedLists):
        return "ivf-lists"
    if isinstance(lists, faiss.BlockInvertedLists) and old.vectors is not None:
        return "ivf-readd"
    raise ArtifactError(
        f"cannot update {old.path}: its {type(old.index).__name__} index keeps neither plain "
        "inverted lists nor stored vectors; rebuild it with keep_vectors=True, or build the "
        "new catalog from scratch"
    )


def _copy_kept(old: MatchIndex, dropped: np.ndarray, writer: CatalogWriter) -> np.ndarray:
    """Copy kept entities (and, where stored, their vector rows) into ``writer``.

    Returns bool (old n_vectors,): the old vector rows that are kept.
    """
    row_entity = np.asarray(old.row_entity)
    if np.any(np.diff(row_entity) < 0):
        raise ArtifactError(f"cannot update {old.path}: its vector rows are not in entity order")
    kept_rows = ~dropped[row_entity]
    per_entity = np.bincount(row_entity, minlength=old.n_entities)
    writer.add_copied(old.path, ~dropped, per_entity)
    if old.vectors is not None:
        for start, block in iter_chunks(old.vectors, _CHUNK):
            writer.append_vectors(block[kept_rows[start : start + len(block)]])
    return kept_rows


def _new_index(
    old: MatchIndex,
    kind: str,
    kept_rows: np.ndarray,
    vectors: np.ndarray,
    new_vectors: np.ndarray,
) -> Any:
    """The new FAISS index: kept rows (renumbered in order) then the added vectors."""
    import faiss

    if kind == "flat":
        index = faiss.IndexFlatIP(old.dim)
        if old.vectors is None:  # kept rows come back from the old flat index itself
            for start in range(0, old.n_vectors, _CHUNK):
                block = old.index.reconstruct_n(start, min(_CHUNK, old.n_vectors - start))
                index.add(np.ascontiguousarray(block[kept_rows[start : start + len(block)]]))
        # vectors.npy holds kept + added rows when the parent stored vectors, else the added
        for _, block in iter_chunks(vectors, _CHUNK):
            index.add(block)
        return index
    index = open_faiss_index(old.path / INDEX_FILE, mmap=True)
    ivf = faiss.extract_index_ivf(index)
    if kind == "ivf-lists":
        lists, total = _kept_lists(ivf, kept_rows)
    else:  # packed (fast-scan) lists: start empty and add every row again
        lists = _empty_like(ivf)
        total, new_vectors = 0, vectors
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the index owns it now
    ivf.ntotal = index.ntotal = total
    for _, block in iter_chunks(new_vectors, _CHUNK):
        index.add(block)  # ids continue from ``total``: the rows after the kept ones
    return index


def _kept_lists(ivf: Any, kept_rows: np.ndarray) -> tuple[Any, int]:
    """ArrayInvertedLists holding the kept entries of ``ivf``'s lists, ids renumbered."""
    import faiss

    renumber = np.cumsum(kept_rows) - 1
    lists = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    old, total = ivf.invlists, 0
    for number in range(ivf.nlist):
        size = old.list_size(number)
        if not size:
            continue
        ids = faiss.rev_swig_ptr(old.get_ids(number), size)
        codes = faiss.rev_swig_ptr(old.get_codes(number), size * ivf.code_size)
        keep = kept_rows[ids]
        # both arrays must stay referenced while add_entries copies from their pointers
        new_ids = np.ascontiguousarray(renumber[ids[keep]], dtype=np.int64)
        new_codes = np.ascontiguousarray(codes.reshape(size, ivf.code_size)[keep])
        if len(new_ids):
            lists.add_entries(number, len(new_ids), faiss.swig_ptr(new_ids),
                              faiss.swig_ptr(new_codes))  # fmt: skip
        total += len(new_ids)
    return lists, total


def _empty_like(ivf: Any) -> Any:
    """Empty packed (fast-scan) inverted lists for ``ivf``, with its code packer."""
    import faiss

    packer = faiss.downcast_index(ivf).get_CodePacker()
    packer.this.disown()  # the lists delete their packer
    return faiss.BlockInvertedLists(ivf.nlist, packer)


def _manifest(
    old: MatchIndex,
    counts: dict[str, int],
    kept_rows: np.ndarray,
    changes: dict[str, int],
    started: float,
) -> dict[str, Any]:
    """The old manifest with new counts and time stamps, and a lineage record."""
    manifest = json.loads(json.dumps(old.manifest))
    parent = {
        "path": str(old.path),
        "created_at": old.manifest.get("created_at"),
        "manifest_sha256": sha256_file(old.path / MANIFEST),
        "entities": old.n_entities,
        "vectors": old.n_vectors,
    }
    manifest.pop("files", None)
    manifest.update(
        library_version=__version__,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        counts=counts,
        build_seconds=round(time.perf_counter() - started, 3),
        lineage={
            "parents": [parent, *old.manifest.get("lineage", {}).get("parents", [])],
            **changes,
            "reused_vectors": int(kept_rows.sum()),
            "encoded_vectors": counts["vectors"] - int(kept_rows.sum()),
        },
    )
    manifest["index"]["nprobe_source"] = "parent" if manifest["index"]["nprobe"] else None
    return manifest
