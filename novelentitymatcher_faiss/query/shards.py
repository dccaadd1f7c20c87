"""Several artifacts opened as one index: each query is encoded once, every shard searched,
and the per-shard top-k merged.

Shards must agree on everything that shapes a query vector (model fingerprint and
dimension, normalizer, lexical settings, index dimension); each keeps its own index type,
nlist and nprobe, and can be rebuilt or updated on its own. Entity ids should be unique
across shards; if one appears in several, its best hit is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact.manifest import SET_FILE, ShardSet
from ..errors import QueryError
from .calibration import Calibration
from .match_index import MatchIndex, check_compatible, load_index
from .protocol import Matchable, Result, Search, check_selection, merge_hits


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
    if not (folder / SET_FILE).is_file():
        raise QueryError(
            f"{folder}: not a shard set (no {SET_FILE}); pass a list of artifact folders"
        )
    return [folder / name for name in ShardSet.read(folder).shards]


class ShardedIndex(Matchable):
    """Opened artifacts searched together; :meth:`~.protocol.Matchable.match` answers as a
    single artifact does (``where`` and ``candidates`` filter every shard; confidence is
    the first shard's :attr:`calibration`)."""

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

    @property
    def front(self) -> MatchIndex:
        """The shard that normalizes and encodes queries (they all do it alike): the first."""
        return self.shards[0]

    @property
    def calibration(self) -> Calibration | None:
        """The first shard's confidence model (shards of a distributed build have none)."""
        return self.shards[0].calibration

    def column_names(self) -> list[str]:
        """The metadata columns of every shard, sorted."""
        return sorted({name for shard in self.shards for name in shard.column_names()})

    def search_encoded(self, vectors: np.ndarray, search: Search) -> list[list[Result]]:
        """:meth:`Matchable.search_encoded` over every shard (``nprobe`` applies to each),
        merged."""
        if search.selection is not None:
            check_selection(self, search.selection)  # once for the set: ids live in one shard
        per_shard = [shard.search_parts(vectors, search) for shard in self.shards]
        return merge_hits(per_shard, search.top_k)

    def __repr__(self) -> str:
        return f"ShardedIndex({len(self.shards)} shards, entities={len(self)})"

