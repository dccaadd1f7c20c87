"""Lexical channel: hashed character n-grams, concatenated with the dense vector.

``lexical_vectors`` maps each text to a float32 vector of ``dim`` buckets: accents folded,
words padded with spaces, every character n-gram in ``[ngram_min, ngram_max]`` hashed
(polynomial hash, multiplicative mix) into a bucket, counts L2-normalized. With
``phonetic`` (the default), the n-grams of each word's spelling key and consonant skeleton
(:func:`spelling_forms`) are counted too, in hash spaces of their own, so that spelling
variants across languages ("Kanada" / "Canada", "Marokko" / "Morocco") share buckets.
With ``name_map`` > 0 (the default) the lexical vector is itself two unit parts,
``sqrt(1 - name_map) * ngrams`` and ``sqrt(name_map) * mapped``, where ``mapped`` is the
learned cross-language projection of the same n-grams (:mod:`namemap`), so its cosine is
``(1 - name_map) * cos_ngrams + name_map * cos_mapped``. ``combine`` concatenates
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

from ..models.encoders import Encoder, normalize_rows
from .namemap import DEFAULT_MAP, NameMap, load_name_map, project, thread_pool

#: Names the hashing scheme; a change of scheme must change this name.
HASH_NAME = "poly1000003-mix9e3779b1-v1"
#: Names the features: n-grams of the folded words only, or also of their spelling forms
#: (:func:`spelling_forms`); a change of the spelling rules must change the second name.
PLAIN_FEATURES = "char_wb"
PHONETIC_FEATURES = "char_wb+spelling-v1"


@dataclass(frozen=True)
class LexicalSettings:
    """How the lexical channel is built; recorded in the manifest, reused by every query.

    ``phonetic``: also count the n-grams of each word's spelling key and consonant skeleton
    (:func:`spelling_forms`); artifacts written before it existed read as False.
    ``name_map``: share of the lexical cosine given to the learned cross-language map
    ``map_name`` (:mod:`namemap`); 0 turns it off, and artifacts written before it read as 0.
    The vector has ``width`` floats: ``dim`` hashed buckets, plus the map's outputs.
    """

    ngram_min: int = 2
    ngram_max: int = 3
    dim: int = 128
    weight: float = 0.8
    phonetic: bool = True
    name_map: float = 0.7
    map_name: str = DEFAULT_MAP

    def __post_init__(self) -> None:
        if not 1 <= self.ngram_min <= self.ngram_max <= 8:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max <= 8, got {self}")
        if self.dim < 1:
            raise ValueError(f"lexical dim must be >= 1, got {self.dim}")
        if not isinstance(self.phonetic, bool):
            raise ValueError(f"lexical phonetic must be True or False, got {self.phonetic!r}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"lexical weight must be within [0, 1], got {self.weight}")
        if not 0.0 <= self.name_map <= 1.0:
            raise ValueError(f"lexical name_map must be within [0, 1], got {self.name_map}")
        loaded = self.loaded_map()
        if loaded is not None and (loaded.hash, loaded.features) != (HASH_NAME, PHONETIC_FEATURES):
            raise ValueError(
                f"name map {self.map_name} was trained on {loaded.hash}/{loaded.features} "
                f"features, this version makes {HASH_NAME}/{PHONETIC_FEATURES}"
            )

    def loaded_map(self) -> NameMap | None:
        """The name map (read and checked once per process), or None when ``name_map`` is 0."""
        return load_name_map(self.map_name) if self.name_map > 0 else None

    @property
    def width(self) -> int:
        """Floats per lexical vector: ``dim``, plus the name map's ``dim_out`` when it is on."""
        loaded = self.loaded_map()
        return self.dim + (loaded.dim_out if loaded is not None else 0)

    def to_dict(self) -> dict[str, float | int | str]:
        """The manifest entry; ``phonetic`` is recorded as the ``features`` name."""
        data: dict[str, float | int | str] = asdict(self)
        del data["phonetic"]
        if not self.name_map:
            del data["map_name"]
        features = PHONETIC_FEATURES if self.phonetic else PLAIN_FEATURES
        return {**data, "hash": HASH_NAME, "features": features}

    @classmethod
    def from_dict(cls, data: dict) -> LexicalSettings:
        features = data.get("features")
        if data.get("hash") != HASH_NAME or features not in (PLAIN_FEATURES, PHONETIC_FEATURES):
            raise ValueError(
                f"unsupported lexical hashing {data.get('hash')}/{features}; "
                "this artifact needs a newer novelentitymatcher-faiss"
            )
        share = float(data.get("name_map", 0.0))
        return cls(
            int(data["ngram_min"]), int(data["ngram_max"]), int(data["dim"]),
            float(data["weight"]), features == PHONETIC_FEATURES, share,
            str(data["map_name"]) if share else DEFAULT_MAP,
        )  # fmt: skip


_COMBINING = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
_SEPARATOR = 0  # codepoint that ends each text in the joined batch
_SPACE = 32
_MIX_INT = 0x9E3779B1  # odd constant (golden ratio) for multiplicative hashing
_MIX = np.uint32(_MIX_INT)
_SMALL_BATCH = 2  # up to this many texts, plain Python beats numpy's per-call overhead
_OVERLAP_TEXTS = 256  # from this many texts, featurize hashes n-grams beside the encoder


def fold(text: str) -> str:
    """Lowercase, decompose and drop combining marks: 'Zürich' -> 'zurich'."""
    return _COMBINING.sub("", unicodedata.normalize("NFKD", text.lower()))


def _folded_join(texts: Sequence[str]) -> str:
    """The texts folded and joined: each becomes ``" word word "`` (single spaces, as far as
    folding keeps them) followed by a 0 separator."""
    joined = "\0".join(" " + " ".join(text.replace("\0", " ").split()) + " " for text in texts)
    return fold(joined + "\0")


def _codes(joined: str) -> np.ndarray:
    return np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)


#: The spelling key's rewrites: these first, in order, on the folded text ...
_DIGRAPHS = (("ph", "f"), ("th", "t"), ("ck", "k"), ("qu", "k"), ("x", "ks"), ("ß", "ss"))
#: ... then these single letters (a codepoint table, so the batch path maps arrays).
_LETTERS = {"c": "k", "q": "k", "z": "s", "w": "v", "y": "i", "j": "i"}
_LETTER_TABLE = np.arange(128, dtype=np.uint32)
_LETTER_TABLE[[ord(a) for a in _LETTERS]] = [ord(b) for b in _LETTERS.values()]
_TRANSLATE = str.maketrans(_LETTERS)
_REPEATS = re.compile(r"([^ \0])\1+")
_SKELETON_DROPS = re.compile(r"(?<=[^ \0])[aeiouh]")
_DROPPED = np.array([ord(ch) for ch in "aeiouh"], dtype=np.uint32)
#: The hash of an n-gram of spelling form c (1: key, 2: skeleton) starts at n + c * this,
#: not n (n <= 8), so the three kinds of n-gram never share a hash.
_FORM_SEED = 16


def _digraphs(folded: str) -> str:
    for old, new in _DIGRAPHS:
        if old in folded:
            folded = folded.replace(old, new)
    return folded


@functools.lru_cache(maxsize=1 << 16)
def spelling_forms(word: str) -> tuple[str, str]:
    """(spelling key, consonant skeleton) of a word, folded.

    The key rewrites letters that spell the same sound across Latin-script languages
    (ph->f, th->t, ck/qu/q/c->k, z->s, w->v, y/j->i, x->ks, ß->ss) and collapses repeated
    letters; the skeleton drops a, e, i, o, u and h from the key but at the word's start:
    'Marokko' and 'Morocco' -> ('maroko', 'mrk') and ('moroko', 'mrk').
    """
    key = _REPEATS.sub(r"\1", _digraphs(fold(word)).translate(_TRANSLATE))
    return key, _SKELETON_DROPS.sub("", key)


def lexical_vectors(texts: Sequence[str], settings: LexicalSettings) -> np.ndarray:
    """float32 (n, settings.width), each row L2-normalized (all-zero for texts with no n-grams).

    A window of n codepoints counts when it holds no separator and no space except at its
    two ends (so n-grams stay inside one space-padded word); its polynomial hash, mixed and
    reduced modulo ``dim``, picks the bucket. With ``settings.phonetic`` the windows of the
    words' spelling forms (:func:`spelling_forms`) count too. With a name map, the map's
    projection of its own n-gram counts follows (see module doc). Vectorized over the batch.
    """
    loaded = settings.loaded_map()
    shared = loaded is not None and loaded.dim_in % settings.dim == 0 and (
        settings.ngram_min, settings.ngram_max, settings.phonetic
    ) == (loaded.ngram_min, loaded.ngram_max, True)
    # A bucket modulo dim_in, taken modulo dim, is the bucket modulo dim (dim divides dim_in).
    fine = loaded.dim_in if shared and loaded is not None else settings.dim
    low, high, phonetic = settings.ngram_min, settings.ngram_max, settings.phonetic
    cells = ngram_cells(texts, low, high, phonetic, fine)
    rows, buckets = np.divmod(cells, fine)
    flat = np.bincount(rows * settings.dim + buckets % settings.dim,
                       minlength=len(texts) * settings.dim)  # fmt: skip
    counts = normalize_rows(flat.reshape(len(texts), settings.dim).astype(np.float32))
    if loaded is None:
        return counts
    if not shared:
        low, high = loaded.ngram_min, loaded.ngram_max
        cells = ngram_cells(texts, low, high, True, loaded.dim_in)
    return combine(counts, project(cells, len(texts), loaded), settings.name_map)


def ngram_cells(
    texts: Sequence[str], ngram_min: int, ngram_max: int, phonetic: bool, dim: int
) -> np.ndarray:
    """int64 ``row * dim + bucket`` of every counted n-gram of ``texts`` (any order)."""
    if len(texts) <= _SMALL_BATCH:
        found = [
            row * dim + bucket
            for row, text in enumerate(texts)
            for bucket in _buckets(text, ngram_min, ngram_max, phonetic, dim)
        ]
        return np.array(found, dtype=np.int64)
    joined = _folded_join(texts)
    forms = [_codes(joined)]
    if phonetic:
        forms += _spelled_codes(joined)
    span = (ngram_min, ngram_max)
    return np.concatenate(
        [_cells(codes, span, dim, form * _FORM_SEED) for form, codes in enumerate(forms)]
    )


def _spelled_codes(joined: str) -> list[np.ndarray]:
    """[key, skeleton] uint32 codepoints of a :func:`_folded_join` batch: the rules of
    :func:`spelling_forms` on arrays (letters mapped by table, a letter equal to the one
    before dropped, then a, e, i, o, u, h dropped after a letter)."""
    key = _codes(_digraphs(joined)).copy()
    ascii_ = key < len(_LETTER_TABLE)
    key[ascii_] = _LETTER_TABLE[key[ascii_]]
    letter = (key != _SPACE) & (key != _SEPARATOR)
    key = key[np.concatenate(([True], ~(letter[1:] & (key[1:] == key[:-1]))))]
    after_letter = np.concatenate(([False], (key[:-1] != _SPACE) & (key[:-1] != _SEPARATOR)))
    return [key, key[~(after_letter & np.isin(key, _DROPPED))]]


def _cells(codes: np.ndarray, span: tuple[int, int], dim: int, seed: int) -> np.ndarray:
    """int64 ``row * dim + bucket`` of every counted window of joined ``codes`` (texts
    ended by 0 separators); each hash starts at ``n + seed``."""
    is_sep = codes == _SEPARATOR
    rows = np.cumsum(is_sep) - is_sep  # a text's separator still belongs to that text
    is_space = codes == _SPACE
    cells: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    for n in range(span[0], span[1] + 1):
        count = len(codes) - n + 1
        if count <= 0:
            continue
        hashed = np.full(count, np.uint32(n + seed), dtype=np.uint32)
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
        cells.append(rows[:count][keep] * dim + (mixed % np.uint32(dim)))
    return np.concatenate(cells)


def _buckets(text: str, low: int, high: int, phonetic: bool, dim: int) -> list[int]:
    """The same buckets as the vectorized path, for one text in plain Python (no overhead).

    No counted window crosses a space, so a text's buckets are the concatenation of its
    space-padded words' buckets (and their spelling forms'), which are cached (names share
    words).
    """
    found: list[int] = []
    for word in text.replace("\0", " ").split():
        found.extend(_word_buckets(word, low, high, dim, 0))
        if phonetic:
            key, skeleton = spelling_forms(word)
            found.extend(_word_buckets(key, low, high, dim, _FORM_SEED))
            found.extend(_word_buckets(skeleton, low, high, dim, 2 * _FORM_SEED))
    return found


@functools.lru_cache(maxsize=1 << 16)
def _word_buckets(
    word: str, ngram_min: int, ngram_max: int, dim: int, seed: int
) -> tuple[int, ...]:
    """Buckets of the windows of ``" word "`` (folded) that hold no interior space; each
    hash starts at ``n + seed``."""
    codes = [ord(ch) for ch in fold(" " + word + " ")]
    interior = _SPACE in codes[1:-1]  # folding can turn a mark into a space
    found = []
    for n in range(ngram_min, ngram_max + 1):
        for i in range(len(codes) - n + 1):
            if interior and _SPACE in codes[i + 1 : i + n - 1]:
                continue
            if n <= 2 and codes[i] == codes[i + n - 1] == _SPACE:
                continue
            hashed = n + seed
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
    """Index vectors of normalized ``texts``: float32 (n, encoder.dim [+ lexical.width]).

    Dense only when ``lexical`` is None, else the weighted concatenation (see module doc).
    From ``_OVERLAP_TEXTS`` texts on, the lexical vectors are made in a thread while the
    encoder runs.
    """
    if lexical is None:
        return encoder.encode(texts, batch_size=batch_size)
    if len(texts) < _OVERLAP_TEXTS:
        lexical_part = lexical_vectors(texts, lexical)
        return combine(encoder.encode(texts, batch_size=batch_size), lexical_part, lexical.weight)
    pending = thread_pool("lexical").submit(lexical_vectors, texts, lexical)
    dense = encoder.encode(texts, batch_size=batch_size)
    return combine(dense, pending.result(), lexical.weight)
