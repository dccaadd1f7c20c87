"""Index choice from a memory budget: the most accurate index kind whose memory fits.

Estimates count what a search touches in RAM (the index file's codes, ids and coarse
centroids), not ``vectors.npy``, which stays on disk behind a memory map and is read only
for the few re-ranked candidates.
"""

from __future__ import annotations

import re

#: Kinds in order of preference for ``index_type="auto"`` with a budget (most accurate
#: first; "ivf-fp16" scores within 1e-4 of "ivf" at half its size, so "ivf" is left out).
#: Fast-scan PQ lists are read into RAM when the index opens (plain lists stay
#: memory-mapped), so the budget's PQ kind is "ivf-pq-small": a quarter of ivf-pq's code,
#: each vector under one list (ivf-pq files it under two), at the same recall after exact
#: re-rank on most catalogs (docs/scaling.md); "ivf-pq" is left to explicit requests.
BUDGET_KINDS = ("ivf-fp16", "ivf-sq8", "ivf-pq-small")
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*$", re.IGNORECASE)


def parse_bytes(size: str | int) -> int:
    """``"2GB"``, ``"1.5GiB"``, ``"512MB"`` or an int -> bytes (decimal or binary units)."""
    if isinstance(size, bool) or not isinstance(size, int | str):
        raise ValueError(f"memory_budget must be bytes (int) or a size like '2GB', got {size!r}")
    if isinstance(size, int):
        value = size
    else:
        match = _SIZE.match(size)
        unit = match.group(2).upper() if match else None
        if not match or unit not in _UNITS:
            raise ValueError(f"memory_budget {size!r} is not a size like '2GB' or '512MiB'")
        value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"memory_budget must be positive, got {size!r}")
    return value


def index_bytes(kind: str, n: int, d: int, nlist: int, spill: int = 1) -> int:
    """Estimated RAM of a ``kind`` index holding ``n`` vectors of dimension ``d``, each
    under ``spill`` lists (an upper bound for small ``n``: fast-scan lists are padded to
    blocks of 32 codes)."""
    if kind == "flat":
        return 4 * d * n
    centroids = 4 * d * nlist
    if kind in ("ivf", "ivf-fp16"):
        return spill * n * ((4 if kind == "ivf" else 2) * d + 8) + centroids
    if kind == "ivf-sq8":
        return spill * n * (d + 8) + centroids + 8 * d  # + per-dimension min and range
    m = pq_subquantizers(kind, d)
    code = -(-m // 2)  # PQ{m}x4fs: m sub-quantizers of 4 bits
    codebooks = m * 16 * (d // m) * 4
    return spill * n * (code + 8) + centroids + codebooks + nlist * 32 * code


def pq_subquantizers(kind: str, d: int) -> int:
    """4-bit sub-quantizers of a PQ ``kind`` for dimension ``d``: the smallest divisor of
    ``d`` that is at least d/2 for "ivf-pq" (2 dimensions each) or d/8 for "ivf-pq-small"
    (8 dimensions each, d/16 bytes of code per vector)."""
    share = 2 if kind == "ivf-pq" else 8
    return next(m for m in range(max(1, -(-d // share)), d + 1) if d % m == 0)


def pick_kind(n: int, d: int, nlist: int, budget: int, flat_max_vectors: int) -> str:
    """``"flat"`` below ``flat_max_vectors`` if it fits, else the first of
    :data:`BUDGET_KINDS` that fits ``budget`` bytes; ValueError when none does."""
    if n < flat_max_vectors and index_bytes("flat", n, d, 0) <= budget:
        return "flat"
    for kind in BUDGET_KINDS:
        if index_bytes(kind, n, d, nlist) <= budget:
            return kind
    need = index_bytes(BUDGET_KINDS[-1], n, d, nlist)
    raise ValueError(
        f"memory_budget of {budget:,} bytes is below the smallest index for {n:,} vectors of "
        f"dimension {d} ({BUDGET_KINDS[-1]} needs about {need:,} bytes); raise the budget, "
        "lower the dimension (embedding_dim) or shard the catalog"
    )
