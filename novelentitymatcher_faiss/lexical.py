"""Lexical channel: hashed character n-grams, concatenated with the dense vector.

``lexical_vectors`` maps each text to a float32 vector of ``dim`` buckets: accents folded,
words padded with spaces, every character n-gram in ``[ngram_min, ngram_max]`` hashed
(polynomial hash, multiplicative mix) into a bucket, counts L2-normalized. ``combine`` concatenates
``sqrt(1 - weight) * dense`` and ``sqrt(weight) * lexical``, so for unit vectors the inner
product of two combined vectors is ``(1 - weight) * cos_dense + weight * cos_lexical``: one
FAISS index serves both channels, and scores stay in [-1, 1].
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .encoders import Encoder, normalize_rows

#: Names the hashing scheme; a change of scheme must change this name.
HASH_NAME = "poly1000003-mix9e3779b1-v1"


@dataclass(frozen=True)
class LexicalSettings:
    """How the lexical channel is built; recorded in the manifest, reused by every query."""

    ngram_min: int = 2
    ngram_max: int = 3
    dim: int = 256
    weight: float = 0.7

    def __post_init__(self) -> None:
        if not 1 <= self.ngram_min <= self.ngram_max <= 8:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max <= 8, got {self}")
        if self.dim < 1:
            raise ValueError(f"lexical dim must be >= 1, got {self.dim}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"lexical weight must be within [0, 1], got {self.weight}")

    def to_dict(self) -> dict[str, float | int | str]:
        return {**asdict(self), "hash": HASH_NAME, "features": "char_wb"}

    @classmethod
    def from_dict(cls, data: dict) -> LexicalSettings:
        if data.get("hash") != HASH_NAME or data.get("features") != "char_wb":
            raise ValueError(
                f"unsupported lexical hashing {data.get('hash')}/{data.get('features')}; "
                "this artifact needs a newer novelentitymatcher-faiss"
            )
        return cls(
            int(data["ngram_min"]), int(data["ngram_max"]), int(data["dim"]), float(data["weight"])
        )


_COMBINING = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
_SEPARATOR = 0  # codepoint that ends each text in the joined batch
_SPACE = 32
_MIX_INT = 0x9E3779B1  # odd constant (golden ratio) for multiplicative hashing
_MIX = np.uint32(_MIX_INT)
_SMALL_BATCH = 2  # up to this many texts, plain Python beats numpy's per-call overhead


def fold(text: str) -> str:
    """Lowercase, decompose and drop combining marks: 'Zürich' -> 'zurich'."""
    return _COMBINING.sub("", unicodedata.normalize("NFKD", text.lower()))


def _codepoints(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Joined, folded codepoints uint32 and the text row of each codepoint int64.

    Each text becomes ``" word word "`` (single spaces) followed by a 0 separator.
    """
    joined = "\0".join(" " + " ".join(text.replace("\0", " ").split()) + " " for text in texts)
    codes = np.frombuffer(fold(joined + "\0").encode("utf-32-le"), dtype=np.uint32)
    is_sep = codes == _SEPARATOR
    rows = np.cumsum(is_sep) - is_sep  # a text's separator still belongs to that text
    return codes, rows


def lexical_vectors(texts: Sequence[str], settings: LexicalSettings) -> np.ndarray:
    """float32 (n, settings.dim), each row L2-normalized (all-zero for texts with no n-grams).

    A window of n codepoints counts when it holds no separator and no space except at its
    two ends (so n-grams stay inside one space-padded word); its polynomial hash, mixed and
    reduced modulo ``dim``, picks the bucket. Vectorized over the whole batch.
    """
    out = np.zeros((len(texts), settings.dim), dtype=np.float32)
    if len(texts) <= _SMALL_BATCH:
        for row, text in enumerate(texts):
            out[row] = np.bincount(_buckets(text, settings), minlength=settings.dim)
        return normalize_rows(out)
    codes, rows = _codepoints(texts)
    is_space = codes == _SPACE
    is_sep = codes == _SEPARATOR
    cells: list[np.ndarray] = []
    for n in range(settings.ngram_min, settings.ngram_max + 1):
        count = len(codes) - n + 1
        if count <= 0:
            continue
        hashed = np.full(count, np.uint32(n), dtype=np.uint32)
        bad = np.zeros(count, dtype=bool)
        for j in range(n):
            hashed = hashed * np.uint32(1_000_003) + codes[j : j + count]
            bad |= is_sep[j : j + count]
            if 0 < j < n - 1:
                bad |= is_space[j : j + count]
        if n <= 2:  # a lone space, or the two pads of an empty text
            bad |= is_space[:count] & is_space[n - 1 : n - 1 + count]
        keep = ~bad
        mixed = (hashed[keep] * _MIX) >> np.uint32(7)
        cells.append(rows[:count][keep] * settings.dim + (mixed % np.uint32(settings.dim)))
    if cells:
        flat = np.bincount(np.concatenate(cells), minlength=out.size)
        out[:] = flat.reshape(out.shape)
    return normalize_rows(out)


def _buckets(text: str, settings: LexicalSettings) -> list[int]:
    """The same buckets as the vectorized path, for one text in plain Python (no overhead).

    No counted window crosses a space, so a text's buckets are the concatenation of its
    space-padded words' buckets, which are cached (names share words).
    """
    found: list[int] = []
    for word in text.replace("\0", " ").split():
        found.extend(_word_buckets(word, settings.ngram_min, settings.ngram_max, settings.dim))
    return found


@functools.lru_cache(maxsize=1 << 16)
def _word_buckets(word: str, ngram_min: int, ngram_max: int, dim: int) -> tuple[int, ...]:
    """Buckets of the windows of ``" word "`` (folded) that hold no interior space."""
    codes = [ord(ch) for ch in fold(" " + word + " ")]
    interior = _SPACE in codes[1:-1]  # folding can turn a mark into a space
    found = []
    for n in range(ngram_min, ngram_max + 1):
        for i in range(len(codes) - n + 1):
            if interior and _SPACE in codes[i + 1 : i + n - 1]:
                continue
            if n <= 2 and codes[i] == codes[i + n - 1] == _SPACE:
                continue
            hashed = n
            for code in codes[i : i + n]:
                hashed = (hashed * 1_000_003 + code) & 0xFFFFFFFF
            found.append((((hashed * _MIX_INT) & 0xFFFFFFFF) >> 7) % dim)
    return tuple(found)


def combine(dense: np.ndarray, lexical: np.ndarray, weight: float) -> np.ndarray:
    """C-contiguous float32 (n, d_dense + d_lexical): the weighted concatenation."""
    out = np.empty((len(dense), dense.shape[1] + lexical.shape[1]), dtype=np.float32)
    np.multiply(dense, math.sqrt(1.0 - weight), out=out[:, : dense.shape[1]], casting="unsafe")
    np.multiply(lexical, math.sqrt(weight), out=out[:, dense.shape[1] :], casting="unsafe")
    return out


def featurize(
    texts: Sequence[str], encoder: Encoder, lexical: LexicalSettings | None, batch_size: int = 1024
) -> np.ndarray:
    """Index vectors of normalized ``texts``: float32 (n, encoder.dim [+ lexical.dim]).

    Dense only when ``lexical`` is None, else the weighted concatenation (see module doc).
    """
    dense = encoder.encode(texts, batch_size=batch_size)
    if lexical is None:
        return dense
    return combine(dense, lexical_vectors(texts, lexical), lexical.weight)
