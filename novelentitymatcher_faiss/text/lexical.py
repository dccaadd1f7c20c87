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
``(1 - name_map) * cos_ngrams + name_map * cos_mapped``. With ``word_idf``, each word's
n-grams count its inverse document frequency in the catalog (:class:`WordWeights`, learned
at build time and stored in the artifact) instead of 1, so a rare word outweighs a generic
one ("Trophy" over "Airport"); the name map still reads plain counts. ``combine`` concatenates
``sqrt(1 - weight) * dense`` and ``sqrt(weight) * lexical``, so for unit vectors the inner
product of two combined vectors is ``(1 - weight) * cos_dense + weight * cos_lexical``: one
FAISS index serves both channels, and scores stay in [-1, 1].
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..models.encoders import Encoder, normalize_rows
from .namemap import DEFAULT_MAP, NameMap, load_name_map, project, thread_pool

#: Names the hashing scheme; a change of scheme must change this name.
HASH_NAME = "poly1000003-mix9e3779b1-v1"
#: Names the features: n-grams of the folded words only, or also of their spelling forms
#: (:func:`spelling_forms`); a change of the spelling rules must change the second name.
PLAIN_FEATURES = "char_wb"
PHONETIC_FEATURES = "char_wb+spelling-v1"
#: The word weights table: file name in the artifact, format version, how words are keyed
#: and how a document frequency becomes a weight; a change of any must change these names.
WORDS_FILE = "lexical_words.npy"
WORDS_VERSION = 1
WORD_HASH = "crc32-utf8-folded-v1"
WORD_FORMULA = "round64(ln((1+texts)/(1+df))+1)"
#: Weights are multiples of 1/_WEIGHT_STEPS: float64 sums of them are exact, so a text
#: gets the same bits alone or in a batch, in any order of its n-grams.
_WEIGHT_STEPS = 64


@dataclass(frozen=True, eq=False)
class WordWeights:
    """Document frequencies of a catalog's folded words, for inverse-document-frequency
    weights.

    ``hashes``: uint32 (k,), the CRC-32 of each distinct folded word's UTF-8, strictly
    increasing; ``df``: uint32 (k,), how many catalog texts hold a word of that hash;
    ``texts``: how many texts were counted. A word's weight is
    ``round(64 * (ln((1 + texts) / (1 + df)) + 1)) / 64`` (df 0 for unseen words: the
    largest weight), so a word in every text weighs about 1.
    """

    hashes: np.ndarray
    df: np.ndarray
    texts: int

    @classmethod
    def learn(cls, texts: Iterable[str]) -> WordWeights:
        """Count the folded words (:func:`text_words`) of ``texts``, each once per text."""
        counts: Counter[str] = Counter()
        total = 0
        for text in texts:
            counts.update(set(text_words(text)))
            total += 1
        return cls.from_counts(counts, total)

    @classmethod
    def from_counts(cls, counts: Counter[str], texts: int) -> WordWeights:
        """From word -> number of texts holding it; words of one hash add up."""
        hashes = np.fromiter((_word_hash(w) for w in counts), dtype=np.uint32, count=len(counts))
        df = np.fromiter(counts.values(), dtype=np.int64, count=len(counts))
        unique, where = np.unique(hashes, return_inverse=True)
        summed = np.bincount(where, weights=df, minlength=len(unique))
        return cls(unique, np.minimum(summed, texts).astype(np.uint32), int(texts))

    def weights(self, words: Sequence[str]) -> np.ndarray:
        """float64 (len(words),): each word's weight, a multiple of 1/64."""
        hashes = np.fromiter((_word_hash(w) for w in words), dtype=np.uint32, count=len(words))
        at = np.minimum(np.searchsorted(self.hashes, hashes), max(len(self.hashes) - 1, 0))
        df = np.zeros(len(words)) if not len(self.hashes) else np.where(
            self.hashes[at] == hashes, self.df[at], 0
        )  # fmt: skip
        idf = np.log((1.0 + self.texts) / (1.0 + df)) + 1.0
        return np.round(idf * _WEIGHT_STEPS) / _WEIGHT_STEPS

    def to_array(self) -> np.ndarray:
        """uint32 (2, k): hashes, then document frequencies (the stored file)."""
        return np.stack([self.hashes, self.df]).astype(np.uint32)

    def digest(self) -> str:
        """sha256 of the table's bytes (:meth:`to_array`): artifacts that must score alike
        (shards, layers) compare it through their manifests."""
        return hashlib.sha256(self.to_array().tobytes()).hexdigest()

    def record(self) -> WordsRecord:
        """The manifest's description of this table."""
        return WordsRecord(texts=self.texts, words=len(self.hashes), sha256=self.digest())

    def save(self, directory: Path) -> None:
        np.save(directory / WORDS_FILE, self.to_array(), allow_pickle=False)

    @classmethod
    def load(cls, directory: Path, record: WordsRecord) -> WordWeights:
        """Read the table ``record`` describes from ``directory``; raises ValueError naming
        the file when it does not match (dtype, shape, order, counts, sha256)."""
        where = Path(directory) / record.file
        table = np.load(where, allow_pickle=False)
        if table.dtype != np.uint32 or table.shape != (2, record.words):
            raise ValueError(f"{where}: expected uint32 (2, {record.words}), got {table.dtype} "
                             f"{table.shape}")  # fmt: skip
        hashes, df = np.ascontiguousarray(table[0]), np.ascontiguousarray(table[1])
        increasing = record.words < 2 or bool((np.diff(hashes.astype(np.int64)) > 0).all())
        if not increasing or (record.words and int(df.max()) > record.texts):
            raise ValueError(f"{where}: hashes not increasing or counts over {record.texts} texts")
        loaded = cls(hashes, df, record.texts)
        if loaded.digest() != record.sha256:
            raise ValueError(f"{where}: sha256 does not match the manifest")
        return loaded


@dataclass(frozen=True)
class WordsRecord:
    """The manifest's ``lexical.word_idf`` entry: which table, in which format, and the
    sha256 of its bytes (so artifacts that must score alike compare the table itself)."""

    texts: int
    words: int
    sha256: str
    version: int = WORDS_VERSION
    file: str = WORDS_FILE
    hash: str = WORD_HASH
    formula: str = WORD_FORMULA

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WordsRecord:
        """ValueError for a version, word hash, formula or file name this version does not
        know."""
        known = (WORDS_VERSION, WORD_HASH, WORD_FORMULA, WORDS_FILE)
        if (data.get("version"), data.get("hash"), data.get("formula"), data.get("file")) != known:
            raise ValueError(
                f"unsupported word weights {data.get('version')!r}/{data.get('hash')!r}/"
                f"{data.get('formula')!r}/{data.get('file')!r}; this artifact needs a newer "
                "novelentitymatcher-faiss"
            )
        return cls(int(data["texts"]), int(data["words"]), str(data["sha256"]))


def _word_hash(word: str) -> int:
    return zlib.crc32(word.encode("utf-8", "surrogatepass"))


def text_words(text: str) -> list[str]:
    """The folded words of ``text`` as the lexical channel splits them (folding can split a
    word): the keys of :class:`WordWeights`."""
    return [word for word in _folded_join([text])[:-1].split(" ") if word]


@dataclass(frozen=True)
class LexicalSettings:
    """How the lexical channel is built; recorded in the manifest, reused by every query.

    ``phonetic``: also count the n-grams of each word's spelling key and consonant skeleton
    (:func:`spelling_forms`); artifacts written before it existed read as False.
    ``name_map``: share of the lexical cosine given to the learned cross-language map
    ``map_name`` (:mod:`namemap`); 0 turns it off, and artifacts written before it read as 0.
    ``word_idf``: weigh each word's n-grams by its inverse document frequency in the
    catalog (:class:`WordWeights`); ``word_record`` names the learned table (None until a
    build has counted the catalog), ``words`` holds it once read (:meth:`with_words`).
    Artifacts written before it read as False.
    The vector has ``width`` floats: ``dim`` hashed buckets, plus the map's outputs.
    """

    ngram_min: int = 2
    ngram_max: int = 3
    dim: int = 128
    weight: float = 0.8
    phonetic: bool = True
    name_map: float = 0.7
    map_name: str = DEFAULT_MAP
    word_idf: bool = False
    word_record: WordsRecord | None = None
    words: WordWeights | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.ngram_min <= self.ngram_max <= 8:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max <= 8, got {self}")
        if self.dim < 1:
            raise ValueError(f"lexical dim must be >= 1, got {self.dim}")
        if not isinstance(self.phonetic, bool):
            raise ValueError(f"lexical phonetic must be True or False, got {self.phonetic!r}")
        if not isinstance(self.word_idf, bool):
            raise ValueError(f"lexical word_idf must be True or False, got {self.word_idf!r}")
        if (self.words is not None or self.word_record is not None) and not self.word_idf:
            raise ValueError("lexical word weights given without word_idf=True")
        if self.words is not None:
            record = self.words.record()
            if self.word_record is None:
                object.__setattr__(self, "word_record", record)  # frozen: set once, here
            elif self.word_record != record:
                raise ValueError("lexical word weights do not match their record")
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

    def to_dict(self) -> dict:
        """The manifest entry; ``phonetic`` is recorded as the ``features`` name, and
        ``word_idf`` (only when on) as the learned table's entry (:meth:`WordWeights.section`).
        """
        data = {k: v for k, v in asdict(self).items()
                if k not in ("words", "word_idf", "word_record")}  # fmt: skip
        del data["phonetic"]
        if not self.name_map:
            del data["map_name"]
        features = PHONETIC_FEATURES if self.phonetic else PLAIN_FEATURES
        if self.word_idf:
            if self.word_record is None:
                raise ValueError("word_idf settings have no learned table yet (build first)")
            data["word_idf"] = self.word_record.to_dict()
        return {**data, "hash": HASH_NAME, "features": features}

    @classmethod
    def from_dict(cls, data: dict) -> LexicalSettings:
        """Settings of a manifest entry; a ``word_idf`` entry is read as its record, the
        table itself by :meth:`with_words`."""
        features = data.get("features")
        if data.get("hash") != HASH_NAME or features not in (PLAIN_FEATURES, PHONETIC_FEATURES):
            raise ValueError(
                f"unsupported lexical hashing {data.get('hash')}/{features}; "
                "this artifact needs a newer novelentitymatcher-faiss"
            )
        share = float(data.get("name_map", 0.0))
        entry = data.get("word_idf")
        record = None if entry is None else WordsRecord.from_dict(entry)
        return cls(
            int(data["ngram_min"]), int(data["ngram_max"]), int(data["dim"]),
            float(data["weight"]), features == PHONETIC_FEATURES, share,
            str(data["map_name"]) if share else DEFAULT_MAP, record is not None, record,
        )  # fmt: skip

    def with_words(self, directory: Path) -> LexicalSettings:
        """These settings with their word weights read from artifact folder ``directory``
        (checked against :attr:`word_record`); themselves when there are none to read."""
        if self.word_record is None or self.words is not None:
            return self
        return dataclasses.replace(self, words=WordWeights.load(directory, self.word_record))

    def learned(self, texts: Iterable[str]) -> LexicalSettings:
        """These settings with the word weights of ``texts`` (normalized catalog texts);
        themselves when ``word_idf`` is off."""
        if not self.word_idf:
            return self
        words = WordWeights.learn(texts)
        return dataclasses.replace(self, words=words, word_record=words.record())


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
    words' spelling forms (:func:`spelling_forms`) count too. With ``settings.words`` each
    window counts its word's weight (:class:`WordWeights`) instead of 1. With a name map,
    the map's projection of its own (unweighted) n-gram counts follows (see module doc).
    Vectorized over the batch.
    """
    loaded = settings.loaded_map()
    shared = loaded is not None and loaded.dim_in % settings.dim == 0 and (
        settings.ngram_min, settings.ngram_max, settings.phonetic
    ) == (loaded.ngram_min, loaded.ngram_max, True)
    # A bucket modulo dim_in, taken modulo dim, is the bucket modulo dim (dim divides dim_in).
    fine = loaded.dim_in if shared and loaded is not None else settings.dim
    low, high, phonetic = settings.ngram_min, settings.ngram_max, settings.phonetic
    weights = None
    if settings.word_idf and settings.words is None:
        raise ValueError("word_idf settings without their word weights: open the artifact "
                         "(load_index) or learn them (LexicalSettings.learned)")  # fmt: skip
    if settings.words is None:
        cells = ngram_cells(texts, low, high, phonetic, fine)
    else:
        cells, weights = weighted_cells(texts, low, high, phonetic, fine, settings.words)
    rows, buckets = np.divmod(cells, fine)
    flat = np.bincount(rows * settings.dim + buckets % settings.dim, weights=weights,
                       minlength=len(texts) * settings.dim)  # fmt: skip
    counts = normalize_rows(flat.reshape(len(texts), settings.dim).astype(np.float32))
    if loaded is None:
        return counts
    if not shared:
        low, high = loaded.ngram_min, loaded.ngram_max
        cells = ngram_cells(texts, low, high, True, loaded.dim_in)
    return combine(counts, project(cells, len(texts), loaded), settings.name_map)


def weighted_cells(
    texts: Sequence[str], ngram_min: int, ngram_max: int, phonetic: bool, dim: int,
    words: WordWeights,
) -> tuple[np.ndarray, np.ndarray]:
    """The cells of :func:`ngram_cells` (same multiset, maybe another order) and float64
    weights, one per cell: the weight of the folded word the n-gram lies in."""
    if len(texts) <= _SMALL_BATCH:
        cells: list[int] = []
        found: list[str] = []
        counts: list[int] = []
        for row, text in enumerate(texts):
            for word in text_words(text):
                buckets = _segment_buckets(word, ngram_min, ngram_max, phonetic, dim)
                cells.extend(row * dim + bucket for bucket in buckets)
                found.append(word)
                counts.append(len(buckets))
        weights = np.repeat(words.weights(found), counts)
        return np.array(cells, dtype=np.int64), weights
    joined = _folded_join(texts)
    forms = [_codes(joined)]
    if phonetic:
        forms += _spelled_codes(joined)
    span = (ngram_min, ngram_max)
    parts = [_cells(codes, span, dim, form * _FORM_SEED, with_words=True)
             for form, codes in enumerate(forms)]  # fmt: skip
    segment = np.concatenate([p[1] for p in parts])
    segments = joined.split(" ")  # segment j follows the j-th space: the word of a window
    used = np.zeros(len(segments), dtype=bool)
    used[segment] = True
    used = np.flatnonzero(used)
    weight_of = np.zeros(len(segments))
    weight_of[used] = words.weights([segments[j] for j in used.tolist()])
    return np.concatenate([p[0] for p in parts]), weight_of[segment]


def _segment_buckets(word: str, low: int, high: int, phonetic: bool, dim: int) -> list[int]:
    """Buckets of one folded word and, with ``phonetic``, of its spelling forms."""
    found = list(_word_buckets(word, low, high, dim, 0))
    if phonetic:
        key, skeleton = spelling_forms(word)
        found.extend(_word_buckets(key, low, high, dim, _FORM_SEED))
        found.extend(_word_buckets(skeleton, low, high, dim, 2 * _FORM_SEED))
    return found


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


def _cells(
    codes: np.ndarray, span: tuple[int, int], dim: int, seed: int, with_words: bool = False
) -> Any:
    """int64 ``row * dim + bucket`` of every counted window of joined ``codes`` (texts
    ended by 0 separators); each hash starts at ``n + seed``. ``with_words``: also int64,
    per window, the number of spaces up to its start (the index of its word among the
    joined text split at spaces), as a pair ``(cells, words)``."""
    is_sep = codes == _SEPARATOR
    rows = np.cumsum(is_sep) - is_sep  # a text's separator still belongs to that text
    is_space = codes == _SPACE
    spaces = np.cumsum(is_space) if with_words else None
    cells: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    words: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
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
        if spaces is not None:
            words.append(spaces[:count][keep])
    if with_words:
        return np.concatenate(cells), np.concatenate(words)
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
