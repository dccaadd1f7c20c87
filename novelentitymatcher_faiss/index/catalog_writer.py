"""Streaming a catalog into an artifact folder: string tables, metadata columns, the row
map and ``vectors.npy`` (each entity's distinct normalized texts, encoded in batches).
"""

from __future__ import annotations

import json
import math
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..artifact.arrays import NpyRowWriter
from ..artifact.columns import ColumnWriter
from ..artifact.files import ROW_ENTITY_FILE, VECTORS_FILE
from ..artifact.strings import StringTable, StringTableWriter
from ..errors import CatalogError
from ..models.encoders import Encoder
from ..text.lexical import (
    LexicalSettings,
    WordWeights,
    combine,
    featurize,
    lexical_vectors,
    text_words,
)
from ..text.normalize import NormalizerSettings, normalize_text
from .catalog import MAX_TEXT_CHARS, read_catalog


class CatalogWriter:
    """Streams entities into an artifact folder: string tables, row map and ``vectors.npy``.

    :meth:`add` normalizes an entity's name and aliases (duplicates dropped) and encodes them
    in batches; :meth:`add_copied` copies entities from another artifact, whose vector rows
    the caller appends with :meth:`append_vectors` (updates reuse vectors that way). Rows
    keep the order entities arrive in. Lexical settings with ``word_idf`` and no table yet:
    the texts' words are counted while the dense part is encoded, and :meth:`close` learns
    the table (:attr:`lexical` then holds it) and writes the lexical part of every row; a
    table, learned or given (updates keep their parent's), is written as ``WORDS_FILE``.
    """

    def __init__(
        self,
        tmp: Path,
        encoder: Encoder,
        lexical: LexicalSettings | None,
        settings: NormalizerSettings,
        batch_size: int,
    ) -> None:
        self.encoder, self.lexical, self.settings = encoder, lexical, settings
        self.batch_size = batch_size
        self.tmp = tmp
        self.ids = StringTableWriter(tmp, "ids")
        self.records = StringTableWriter(tmp, "entities", ext=".jsonl")
        self.texts = StringTableWriter(tmp, "texts")
        self.vectors = NpyRowWriter(
            tmp / VECTORS_FILE, encoder.dim + (lexical.width if lexical else 0)
        )
        self.columns = ColumnWriter(tmp)
        self.columns_section: dict[str, Any] | None = None  # set by close()
        self.row_entity = array("q")
        self.max_per_entity = 0
        self._batch: list[str] = []
        self._learn = lexical is not None and lexical.word_idf and lexical.words is None
        self._words: Counter[str] = Counter()
        self._counted = 0

    def add(self, entity: Mapping[str, Any]) -> None:
        """Add a validated entity, encoding its distinct normalized texts."""
        row = len(self.ids)
        seen: set[str] = set()
        for text in (entity["name"], *entity["aliases"]):
            norm = normalize_text(text[:MAX_TEXT_CHARS], self.settings)
            if norm and norm not in seen:
                seen.add(norm)
                self.texts.add(text)
                self.row_entity.append(row)
                self._batch.append(norm)
        if not seen:
            raise CatalogError(
                f"entity {row + 1} ({entity['id']!r}): name and aliases normalize to empty text"
            )
        self._add_record(entity["id"], json.dumps(entity, ensure_ascii=False) + "\n", len(seen))
        self.columns.add(entity)
        if len(self._batch) >= self.batch_size:
            self._flush()

    def add_copied(self, source: Path, keep: np.ndarray, rows_per_entity: np.ndarray) -> None:
        """Add, in bulk, the entities of artifact folder ``source`` where ``keep`` is set.

        ``keep`` bool (n_entities,); ``rows_per_entity`` int64 (n_entities,) their vector
        row counts. Their vector rows are the caller's to append (:meth:`append_vectors`).
        """
        if self._learn:
            raise ValueError("copied vectors need the word weights they were made with")
        self._flush()
        records = StringTable(source, "entities", ext=".jsonl")
        self.ids.add_rows(StringTable(source, "ids"), keep)
        self.records.add_rows(records, keep)
        for row in np.flatnonzero(keep).tolist():
            self.columns.add(json.loads(records[row]))
        self.texts.add_rows(StringTable(source, "texts"), np.repeat(keep, rows_per_entity))
        counts = rows_per_entity[keep]
        first = len(self.ids) - len(counts)
        self.row_entity.extend(np.repeat(np.arange(first, first + len(counts)), counts).tolist())
        if len(counts):
            self.max_per_entity = max(self.max_per_entity, int(counts.max()))

    def append_vectors(self, block: np.ndarray) -> None:
        """Append ready-made vector rows, float32 (n, dim), for entities added by copy."""
        self.vectors.append(block)

    def close(self) -> dict[str, int]:
        """Encode what is pending, close every file; returns the manifest's counts (and
        sets :attr:`columns_section`, the manifest's ``columns``)."""
        self._flush()
        self.columns_section = self.columns.close()
        for writer in (self.ids, self.records, self.texts, self.vectors):
            writer.close()
        if self._learn and self.lexical is not None:
            words = WordWeights.from_counts(self._words, self._counted)
            self.lexical = replace(self.lexical, words=words, word_record=words.record())
            self._learn = False
            self._fill_lexical()
        if self.lexical is not None and self.lexical.words is not None:
            self.lexical.words.save(self.tmp)
        np.save(
            self.tmp / ROW_ENTITY_FILE,
            np.frombuffer(self.row_entity, dtype=np.int64),
            allow_pickle=False,
        )
        return {
            "entities": len(self.ids),
            "vectors": len(self.texts),
            "max_vectors_per_entity": self.max_per_entity,
        }

    def _add_record(self, entity_id: str, record: str, rows: int) -> None:
        self.max_per_entity = max(self.max_per_entity, rows)
        self.ids.add(entity_id)
        self.records.add(record)

    def _flush(self) -> None:
        if not self._batch:
            return
        if self._learn and self.lexical is not None:  # lexical part: zeros until close()
            for text in self._batch:
                self._words.update(set(text_words(text)))
            self._counted += len(self._batch)
            dense = self.encoder.encode(self._batch, batch_size=self.batch_size)
            empty = np.zeros((len(dense), self.lexical.width), dtype=np.float32)
            self.vectors.append(combine(dense, empty, self.lexical.weight))
        else:
            self.vectors.append(featurize(self._batch, self.encoder, self.lexical, self.batch_size))
        self._batch.clear()

    def _fill_lexical(self, block: int = 8192) -> None:
        """Write the lexical columns of ``vectors.npy`` from the texts table, in blocks (the
        texts normalized again, as :meth:`add` did), with the learned word weights."""
        assert self.lexical is not None
        vectors = np.load(self.tmp / VECTORS_FILE, mmap_mode="r+", allow_pickle=False)
        texts = StringTable(self.tmp, "texts")
        for start in range(0, len(texts), block):
            rows = range(start, min(start + block, len(texts)))
            normalized = [normalize_text(texts[i][:MAX_TEXT_CHARS], self.settings) for i in rows]
            lex = lexical_vectors(normalized, self.lexical)
            np.multiply(lex, math.sqrt(self.lexical.weight), casting="unsafe",
                        out=vectors[start : start + len(rows), self.encoder.dim :])  # fmt: skip
        vectors.flush()
        del vectors


def encode_catalog(
    entities: Iterable[Mapping[str, Any]] | str | Path,
    tmp: Path,
    encoder: Encoder,
    lexical: LexicalSettings | None,
    settings: NormalizerSettings,
    batch_size: int,
    show_progress: bool,
) -> tuple[dict[str, int], dict[str, Any], LexicalSettings | None]:
    """Stream entities into the string tables, metadata columns and ``vectors.npy`` (their
    texts encoded); returns the manifest's counts and columns sections and the lexical
    settings the vectors were made with (word weights learned, :class:`CatalogWriter`)."""
    writer = CatalogWriter(tmp, encoder, lexical, settings, batch_size)
    total = (
        len(entities) if hasattr(entities, "__len__") and not isinstance(entities, str) else None
    )
    bar = tqdm(total=total, desc="encoding catalog", unit=" entities", disable=not show_progress)
    for entity in read_catalog(entities):
        writer.add(entity)
        bar.update(1)
    bar.close()
    counts = writer.close()
    return counts, writer.columns_section, writer.lexical


