"""The learned cross-language name map of the lexical channel.

A linear map from the lexical channel's hashed character n-grams (``dim_in`` buckets, the
same n-grams and spelling forms as :func:`lexical.lexical_vectors`) to ``dim_out`` floats,
trained so that a name in one language lands near the same entity's name in another
("Allemagne", "Niemcy" near "Germany"). The weights ship inside the package as a float16
``.npy`` (read without pickle) with a JSON card that names them, records their sha256 and
how they were trained (``scripts/train_name_map.py``); both are checked when read.
"""

from __future__ import annotations

import functools
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifact.files import sha256_file
from ..models.encoders import normalize_rows

#: The card format this version reads and writes.
CARD_VERSION = 1
#: The map that new artifacts use; every name here ships in ``DATA_DIR``. Artifacts record
#: the name only, so changed weights must get a new name.
DEFAULT_MAP = "cldr-names-v1"
DATA_DIR = Path(__file__).parent / "data"
_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


@dataclass(frozen=True)
class NameMap:
    """A loaded map: ``weights`` float64 (dim_in, dim_out), float16 values; the n-gram
    settings it expects."""

    name: str
    weights: np.ndarray
    ngram_min: int
    ngram_max: int
    features: str
    hash: str

    @property
    def dim_in(self) -> int:
        return int(self.weights.shape[0])

    @property
    def dim_out(self) -> int:
        return int(self.weights.shape[1])


def card_path(name: str, directory: Path = DATA_DIR) -> Path:
    return directory / f"{name}.json"


@functools.lru_cache(maxsize=4)
def load_name_map(name: str = DEFAULT_MAP, directory: Path = DATA_DIR) -> NameMap:
    """Read and check map ``name``: card version, weights file sha256, shape and dtype.

    Raises ValueError naming the file on any mismatch or an unknown map.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"name map name must be lowercase letters, digits and '-', got {name!r}")
    card_file = card_path(name, directory)
    if not card_file.is_file():
        raise ValueError(
            f"unknown name map {name!r} (no {card_file.name}); this artifact needs a newer "
            "novelentitymatcher-faiss"
        )
    card = json.loads(card_file.read_text(encoding="utf-8"))
    if card.get("format_version") != CARD_VERSION or card.get("name") != name:
        raise ValueError(
            f"{card_file}: unsupported name map card (format_version "
            f"{card.get('format_version')!r}, name {card.get('name')!r})"
        )
    weights_file = directory / card["weights"]
    digest = sha256_file(weights_file)
    if digest != card["sha256"]:
        raise ValueError(f"{weights_file}: sha256 {digest} does not match its card")
    weights = np.load(weights_file, allow_pickle=False)
    shape = (card["dim_in"], card["dim_out"])
    if weights.dtype != np.float16 or weights.shape != shape:
        raise ValueError(f"{weights_file}: expected float16 {shape}, got {weights.dtype} "
                         f"{weights.shape}")  # fmt: skip
    return NameMap(
        name, np.ascontiguousarray(weights, dtype=np.float64), int(card["ngram_min"]),
        int(card["ngram_max"]), str(card["features"]), str(card["hash"]),
    )  # fmt: skip


def project(cells: np.ndarray, rows: int, name_map: NameMap) -> np.ndarray:
    """float32 (rows, dim_out), rows L2-normalized (zero for rows with no cells).

    ``cells``: int64 ``row * dim_in + bucket`` of every counted n-gram; a row's vector is
    its bucket counts times the map's weights (sparse product, no dense count matrix, split
    over threads for large batches). The weights are float16 values, multiples of 2**-24
    below 2**16, so float64 sums of fewer than 8192 of them are exact: one text alone or in
    a batch, in any order of its n-grams, gets the same bits.
    """
    row_of, bucket = np.divmod(cells, name_map.dim_in)
    if rows == 0:
        return np.zeros((0, name_map.dim_out), dtype=np.float32)
    if rows == 1:  # one query: a row gather beats building a sparse matrix
        summed = name_map.weights[bucket].sum(axis=0, keepdims=True)
        return normalize_rows(summed.astype(np.float32))
    import scipy.sparse  # here, not at import: a single query (above) never needs it

    indptr = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_of, minlength=rows), out=indptr[1:])
    # repeated buckets in a row are fine: the product sums every stored entry
    counts = scipy.sparse.csr_matrix(
        (np.ones(len(cells)), bucket[np.argsort(row_of, kind="stable")], indptr),
        shape=(rows, name_map.dim_in),
    )
    out = np.empty((rows, name_map.dim_out), dtype=np.float32)
    step = -(-rows // _THREADS) if rows >= _THREADED_ROWS else rows
    chunks = [slice(start, start + step) for start in range(0, rows, step)]

    def one(chunk: slice) -> None:
        out[chunk] = counts[chunk] @ name_map.weights

    if len(chunks) == 1:
        one(chunks[0])
    else:
        list(thread_pool("namemap").map(one, chunks))
    return normalize_rows(out)


_THREADS = max(1, min(4, os.cpu_count() or 1))
_THREADED_ROWS = 4096  # below this, a thread hand-off costs more than it saves


@functools.cache
def thread_pool(role: str) -> ThreadPoolExecutor:
    """The process's threads for one ``role``. A task must not wait on its own role's pool;
    :func:`project` (scipy's sparse product releases the GIL) uses ``"namemap"``."""
    return ThreadPoolExecutor(_THREADS, thread_name_prefix=f"nem-faiss-{role}")


# a forked child has none of its parent's threads: it starts pools of its own
os.register_at_fork(after_in_child=thread_pool.cache_clear)
