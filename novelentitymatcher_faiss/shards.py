"""Several artifacts opened as one index: each query is encoded once, every shard searched,
and the per-shard top-k merged.

Shards must agree on everything that shapes a query vector (model fingerprint and
dimension, normalizer, lexical settings, index dimension); each keeps its own index type,
nlist and nprobe, and can be rebuilt or updated on its own. Entity ids should be unique
across shards; if one appears in several, its best hit is kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import Calibration
from .errors import ArtifactCorruptError, ArtifactIncompatibleError, QueryError
from .filters import Selection, make_selection
from .match_index import (
    MatchIndex,
    Result,
    check_compatible,
    check_selection,
    check_top_k,
    load_index,
    merge_hits,
)

#: A shard set folder (written by a distributed build) lists its shards in this file.
SET_FILE = "shards.json"
SET_FORMAT = "nem-faiss-shards"
SET_FORMAT_VERSION = 1



def load_shards(
    paths: str | Path | Sequence[str | Path], *, verify: str = "fast"
) -> ShardedIndex:
    """Open artifacts as one :class:`ShardedIndex`: a list of artifact folders, or a shard
    set folder holding ``shards.json`` (see :func:`load_index` for ``verify``)."""
    if isinstance(paths, str | Path):
        paths = _set_members(Path(paths))
    if not paths:
        raise QueryError("load_shards takes a non-empty list of artifact folders or a shard set")
    return ShardedIndex([load_index(path, verify=verify) for path in paths])


def _set_members(folder: Path) -> list[Path]:
    """The shard folders listed by ``folder/shards.json``, checked."""
    listing = folder / SET_FILE
    if not listing.is_file():
        raise QueryError(
            f"{folder}: not a shard set (no {SET_FILE}); pass a list of artifact folders"
        )
    try:
        info = json.loads(listing.read_text(encoding="utf-8"))
        kind, version, names = info["format"], info["format_version"], info["shards"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactCorruptError(f"{listing}: unreadable shard list ({exc!r})") from None
    if kind != SET_FORMAT or not isinstance(version, int) or version > SET_FORMAT_VERSION:
        raise ArtifactIncompatibleError(
            f"{listing}: format {kind!r} version {version!r}; this library reads "
            f"{SET_FORMAT!r} up to version {SET_FORMAT_VERSION}"
        )
    bad = [n for n in names if not isinstance(n, str) or Path(n).name != n or n in ("", ".", "..")]
    if bad or not names:
        raise ArtifactCorruptError(f"{listing}: shard names must be plain folder names: {bad}")
    return [folder / name for name in names]


class ShardedIndex:
    """Opened artifacts searched together; ``match`` has :meth:`MatchIndex.match`'s shape."""

    def __init__(self, shards: list[MatchIndex]) -> None:
        first = shards[0]
        for shard in shards[1:]:
            check_compatible(first, shard)
        self.shards = shards
        self.dim = first.dim

    def __len__(self) -> int:
        return sum(len(shard) for shard in self.shards)

    def holds(self, entity_id: str) -> bool:
        """Whether a shard holds ``entity_id`` as a visible entity."""
        return any(shard.holds(entity_id) for shard in self.shards)

    def get(self, entity_id: str) -> dict[str, Any] | None:
        """The entity record from the first shard that holds ``entity_id``, or None."""
        for shard in self.shards:
            found = shard.get(entity_id)
            if found is not None:
                return found
        return None

    def match(
        self,
        texts: str | Sequence[str],
        top_k: int = 1,
        threshold: float | str | None = None,
        nprobe: int | None = None,
        batch_size: int = 4096,
        explain: bool = False,
        where: Mapping[str, Any] | None = None,
        candidates: Iterable[str] | None = None,
        metadata: bool = False,
    ) -> Result | list[Result] | None | list[Result | None] | list[list[Result]]:
        """As :meth:`MatchIndex.match`, over every shard (``nprobe`` applies to each;
        ``where`` and ``candidates`` filter every shard; confidence is the first shard's
        :attr:`calibration`)."""
        selection = make_selection(where, candidates)
        records = self if metadata else None
        first = self.shards[0]
        return first._match(texts, top_k, threshold, nprobe, batch_size, explain, self._search,
                            selection, records, self.calibration)  # fmt: skip

    @property
    def calibration(self) -> Calibration | None:
        """The first shard's confidence model (shards of a distributed build have none)."""
        return self.shards[0].calibration

    def column_names(self) -> list[str]:
        """The metadata columns of every shard, sorted."""
        return sorted({name for shard in self.shards for name in shard.column_names()})

    def search_vectors(
        self,
        queries: np.ndarray,
        top_k: int = 1,
        threshold: float | None = None,
        nprobe: int | None = None,
    ) -> list[list[Result]]:
        """As :meth:`MatchIndex.search_vectors`, over every shard."""
        per_shard = [shard.search_vectors(queries, top_k, threshold, nprobe)
                     for shard in self.shards]  # fmt: skip
        return merge_hits(per_shard, check_top_k(top_k))

    def _search(
        self,
        vectors: np.ndarray,
        top_k: int,
        threshold: float | None,
        nprobe: int | None,
        selection: Selection | None = None,
    ) -> list[list[Result]]:
        if selection is not None:
            check_selection(self, selection)  # once for the set: ids live in one shard
        per_shard = [shard._search_parts(vectors, top_k, threshold, nprobe, selection)
                     for shard in self.shards]  # fmt: skip
        return merge_hits(per_shard, top_k)

    def __repr__(self) -> str:
        return f"ShardedIndex({len(self.shards)} shards, entities={len(self)})"

