"""Catalog changes without a full re-encode: a new artifact from an old one plus a diff.

Two ways, picked per update (``compact``):

* **Layer** (the default while the changes stay small): the new artifact hard-links every
  file of the old one (a copy where links are not possible), hides removed and replaced
  entities with a mask, and writes the added entities as a small sub-artifact
  ``layer-NNN/`` that shares the old index's trained quantizer and codes' training. Only
  added entities are encoded and only they are written, so the update costs little more
  than encoding them. Queries search the old index (hidden rows excluded by a FAISS
  ``IDSelectorBitmap``) and each layer, and merge the top-k.
* **Compact**: a single-index artifact. Unchanged entities keep their vector rows: copied
  from the old ``vectors.npy``, rebuilt from a flat index, or, for IVF indexes with plain
  inverted lists (``ivf``, ``ivf-sq8``), kept as their stored codes in the same lists (no
  re-assignment). Entities of earlier layers and added ones are encoded.

Either way the old artifact's model, normalizer, lexical settings, IVF quantizer and nprobe
carry over, the new manifest records its lineage, and the old artifact is never modified
(hard-linked files are only ever read).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .._version import __version__
from ..artifact.arrays import load_array
from ..artifact.files import (
    INDEX_FILE,
    MANIFEST,
    MODEL_DIR,
    STAGE_GRAPH_FILE,
    VECTORS_FILE,
    atomic_directory,
    file_records,
    open_faiss_index,
    sha256_file,
)
from ..artifact.manifest import (
    Counts,
    Layers,
    Manifest,
    read_manifest,
    utc_stamp,
    write_manifest,
)
from ..errors import ArtifactError, ArtifactExistsError, CatalogError
from ..models.encoders import Encoder
from ..query.match_index import MatchIndex, load_index
from ..query.scorers import HEAD_FILE
from .build import BuildConfig, build, open_fresh
from .catalog import read_catalog
from .catalog_writer import CatalogWriter
from .indexing import IndexConfig, is_graph_factory
from .search import iter_chunks
from .spill import fill
from .tuning import TuningConfig

_CHUNK = 65536
#: ``compact=None`` writes a layer while the layers (with this update) hold at most this
#: share of the base's entities, there are fewer than ``MAX_LAYERS`` and at most this share
#: of the base is hidden; otherwise it compacts.
LAYER_MAX_SHARE = 0.25
MAX_LAYERS = 8


@dataclass
class _Change:
    """One update, as both ways of writing it take it."""

    masks: list[np.ndarray]  # per segment (base, then layers): bool (n_entities,) hidden after
    added: list[dict[str, Any]]  # entities to encode, in order
    counts: dict[str, int]  # added / replaced / removed entities, for the lineage
    started: float  # time.perf_counter() when the update began
    batch_size: int
    show_progress: bool


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
    compact: bool | None = None,
) -> MatchIndex:
    """Write to ``out`` the artifact at ``path`` with entities ``remove``d and ``add``ed.

    ``add`` takes what :func:`~novelentitymatcher_faiss.build_index` takes (entity dicts or
    a CSV/JSONL/JSON path); an added id that already exists replaces that entity. ``remove``
    lists ids that must exist. ``compact``: True writes a single-index artifact, False a
    layered one (see the module docs), None decides by size (``LAYER_MAX_SHARE``,
    ``MAX_LAYERS``). ``out`` must differ from ``path``; it is written atomically and replaces
    an existing artifact only with ``overwrite=True``. Returns the new artifact, opened.
    ``encoder`` reuses an already loaded encoder (its fingerprint must match).
    """
    started = time.perf_counter()
    old = load_index(path, encoder=encoder)
    source, target = Path(path).resolve(), Path(out).resolve()
    if source == target:
        raise ArtifactExistsError(
            f"{out}: the output must differ from the artifact being updated (it stays readable)"
        )
    added = list(read_catalog(add)) if add is not None else []
    masks, removed, replaced = _hidden_after(old, remove, added)
    if not added and not removed:
        raise CatalogError("nothing to update: give entities to add or ids to remove")
    if not added and all(mask.all() for mask in masks):
        raise CatalogError("the update would remove every entity; an artifact needs one")
    old.encoder  # noqa: B018 - loaded and fingerprint-checked before anything is written
    changes = {"added_entities": len(added) - replaced, "replaced_entities": replaced,
               "removed_entities": removed}  # fmt: skip
    if compact is None:
        compact = not _layerable(old) or _should_compact(old, masks[0], len(added))
    elif not compact and not _layerable(old):
        raise ArtifactError(
            f"cannot layer an update over {old.path}: its {type(old.index).__name__} index "
            "is neither flat, HNSW nor IVF; update with compact=True"
        )
    write = _write_compacted if compact else _write_layer
    change = _Change(masks, added, changes, started, batch_size, show_progress)
    with atomic_directory(target, overwrite=overwrite) as tmp:
        write(old, tmp, change)
    return open_fresh(target)


def _hidden_after(
    old: MatchIndex, remove: Iterable[str], added: list[dict[str, Any]]
) -> tuple[list[np.ndarray], int, int]:
    """Per segment (the old artifact's own index, then each layer): bool (n_entities,) of
    the entities hidden after the update (already hidden, removed, or replaced by an added
    entity of the same id); and how many were removed and replaced."""
    if isinstance(remove, str):
        raise CatalogError("remove takes a list of ids, not a single string")
    remove = list(remove)
    bad = [entity_id for entity_id in remove if not isinstance(entity_id, str)]
    if bad:
        raise CatalogError(f"ids to remove must be strings, got {bad[0]!r}")
    segments = [old, *old.layers]
    masks = [segment.hidden_mask() for segment in segments]

    def hide(entity_id: str) -> bool:
        for mask, segment in zip(masks, segments, strict=True):
            row = segment.row_of(entity_id)
            if row is not None and not mask[row]:
                mask[row] = True
                return True
        return False

    missing = [entity_id for entity_id in remove if not hide(entity_id)]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise CatalogError(f"cannot remove {len(missing)} id(s) not in {old.path}: {shown}")
    replaced = sum(hide(entity["id"]) for entity in added)
    return masks, len(remove), replaced


def _layerable(old: MatchIndex) -> bool:
    """Whether layers can extend ``old``: a flat, HNSW or IVF index (they take ID selectors
    and give an emptied, trained copy, or need no training)."""
    import faiss

    if isinstance(old.index, faiss.IndexFlat | faiss.IndexHNSW):
        return True
    try:
        faiss.extract_index_ivf(old.index)
    except RuntimeError:
        return False
    return True


def _should_compact(old: MatchIndex, base_hidden: np.ndarray, n_added: int) -> bool:
    layered = sum(layer.n_entities for layer in old.layers) + n_added
    return (
        len(old.layers) + bool(n_added) > MAX_LAYERS
        or layered > LAYER_MAX_SHARE * old.n_entities
        or base_hidden.sum() > LAYER_MAX_SHARE * old.n_entities
    )


def _write_layer(old: MatchIndex, tmp: Path, change: _Change) -> None:
    """Hard-link the old artifact into ``tmp``, add a layer for the added entities, write
    the masks."""
    masks, added = change.masks, change.added
    info = old.manifest.layers or Layers(None, (), 0)
    old_masks = set(info.masks)
    records = {}
    for name, record in old.manifest.files.items():
        if name not in old_masks:  # masks are rewritten, never written through a link
            _link_or_copy(old.path / name, tmp / name)
            records[name] = record
    folders = [folder for folder, _ in info.segments]
    if added:
        number = 1 + max((int(folder.rsplit("-", 1)[1]) for folder in folders), default=0)
        folders.append(f"layer-{number:03d}")
        _build_layer(old, added, tmp / folders[-1], change.batch_size, change.show_progress)
        masks = [*masks, np.zeros(0, bool)]
    names = []
    for number, mask in enumerate(masks):
        name = f"hidden-{number:03d}-{os.urandom(4).hex()}.npy" if mask.any() else None
        if name:
            np.save(tmp / name, mask, allow_pickle=False)
        names.append(name)
    old_segments = [old, *old.layers]
    reused = sum(int((~mask[np.asarray(segment.row_entity)]).sum())
                 for segment, mask in zip(old_segments, masks, strict=False))  # fmt: skip
    counts = [read_manifest(tmp / folder).counts for folder in folders]
    encoded = counts[-1].vectors if added else 0
    sizes = [old.n_entities, *(count.entities for count in counts)]
    layers = Layers(
        names[0], tuple(zip(folders, names[1:], strict=True)),
        sum(size - int(mask.sum()) for size, mask in zip(sizes, masks, strict=True)),
    )  # fmt: skip
    manifest = _manifest(old, old.manifest.counts, change, reused, encoded)
    write_manifest(tmp, manifest.replace(layers=layers, files=file_records(tmp, reuse=records)))


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (parents created); copy where linking fails."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _build_layer(
    old: MatchIndex, added: list[dict[str, Any]], folder: Path, batch_size: int, progress: bool
) -> None:
    """A sub-artifact of ``added`` encoded and indexed like ``old`` (same trained index)."""
    info = old.manifest.index
    untrained = info.type == "flat" or is_graph_factory(info.factory)
    index = IndexConfig("flat" if info.type == "flat" else info.factory, rerank=info.rerank,
                        spill=info.spill, keep_vectors=old.vectors is not None)  # fmt: skip
    config = BuildConfig(
        normalizer=old.normalizer, lexical=old.lexical, index=index,
        tuning=TuningConfig(nprobe=old.breadth), batch_size=batch_size,
        show_progress=progress, extra_manifest={"layer": True},
    )  # fmt: skip
    build(added, folder, config, encoder=old.encoder,
          trained=None if untrained else _emptied(old))  # fmt: skip


def _emptied(old: MatchIndex) -> Any:
    """The old artifact's index, read again, with its inverted lists emptied: trained
    quantizer and codes, no vectors."""
    import faiss

    index = open_faiss_index(old.path / INDEX_FILE, mmap=True)
    ivf = faiss.extract_index_ivf(index)
    if isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.BlockInvertedLists):
        lists = _empty_like(ivf)
    else:
        lists = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the index owns it now
    ivf.ntotal = index.ntotal = 0
    return index


def _write_compacted(old: MatchIndex, tmp: Path, change: _Change) -> None:
    """A single-index artifact: the old index's visible entities (vector rows reused) plus
    the visible entities of its layers and the added ones (encoded)."""
    masks, added = change.masks, change.added
    batch_size, show_progress = change.batch_size, change.show_progress
    carried = [layer.entity(row) for layer, mask in zip(old.layers, masks[1:], strict=True)
               for row in np.flatnonzero(~mask)]  # fmt: skip
    dropped = masks[0]
    index_kind = _index_kind(old)
    writer = CatalogWriter(tmp, old.encoder, old.lexical, old.normalizer, batch_size)
    kept_rows = _copy_kept(old, dropped, writer)
    for entity in tqdm(carried + added, desc="encoding added entities", unit=" entities",
                       disable=not show_progress or not (carried or added)):  # fmt: skip
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
    if (old.path / STAGE_GRAPH_FILE).exists():  # the IVF centroids are kept: so is their graph
        _link_or_copy(old.path / STAGE_GRAPH_FILE, tmp / STAGE_GRAPH_FILE)
    if old.manifest.model.bundled:
        shutil.copytree(old.path / MODEL_DIR, tmp / MODEL_DIR)
    elif (old.path / HEAD_FILE).is_file():  # head-only training: the head at the root
        _link_or_copy(old.path / HEAD_FILE, tmp / HEAD_FILE)
    reused = int(kept_rows.sum())
    manifest = _manifest(old, Counts(**counts), change, reused, counts["vectors"] - reused)
    write_manifest(tmp, manifest.replace(columns=writer.columns_section, files=file_records(tmp)))


def _index_kind(old: MatchIndex) -> str:
    """How the new index is made: "flat", "graph" (an HNSW index built again from the kept
    and added vectors), "ivf-lists" (codes copied) or "ivf-readd"."""
    import faiss

    if isinstance(old.index, faiss.IndexFlat):
        return "flat"
    if isinstance(old.index, faiss.IndexHNSWFlat):
        return "graph"
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

    if kind in ("flat", "graph"):
        index = (
            faiss.IndexFlatIP(old.dim)
            if kind == "flat"
            else faiss.index_factory(
                old.dim, old.manifest.index.factory, faiss.METRIC_INNER_PRODUCT
            )
        )
        if old.vectors is None:  # kept rows come back from the old index's raw vectors
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
        first = int(kept_rows.sum())
    else:  # packed (fast-scan) lists: start empty and add every row again
        lists = _empty_like(ivf)
        total, first, new_vectors = 0, 0, vectors
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the index owns it now
    ivf.ntotal = index.ntotal = total
    # ids continue from ``first``: the rows after the kept ones
    blocks = ((first + start, block) for start, block in iter_chunks(new_vectors, _CHUNK))
    return fill(index, blocks, old.spill)


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
    old: MatchIndex, counts: Counts, change: _Change, reused: int, encoded: int
) -> Manifest:
    """The old manifest with new counts and time stamps, and a lineage record (its files
    and layers are the caller's to set)."""
    parent = {
        "path": str(old.path),
        "created_at": old.manifest.created_at,
        "manifest_sha256": sha256_file(old.path / MANIFEST),
        "entities": len(old),
        "vectors": old.n_vectors + sum(layer.n_vectors for layer in old.layers),
    }
    ancestors = (old.manifest.lineage or {}).get("parents", [])
    carried = old.manifest.index.breadth is not None
    return old.manifest.replace(
        library_version=__version__,
        created_at=utc_stamp(),
        counts=counts,
        build_seconds=round(time.perf_counter() - change.started, 3),
        build_stages=None,  # stage times are the parent build's
        files={},
        layers=None,
        lineage={"parents": [parent, *ancestors], **change.counts, "reused_vectors": reused,
                 "encoded_vectors": encoded},  # fmt: skip
        index=replace(old.manifest.index, nprobe_source="parent" if carried else None),
    )
