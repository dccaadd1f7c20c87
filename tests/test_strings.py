"""String tables: batch reads equal row reads, and damage is named, not returned."""

from __future__ import annotations

import numpy as np
import pytest

from novelentitymatcher_faiss.artifact.strings import StringTable, StringTableWriter
from novelentitymatcher_faiss.errors import ArtifactCorruptError

WORDS = ["Zürich", "", "東京", "São Paulo", "x" * 300, "New York"]


@pytest.fixture
def table(tmp_path) -> StringTable:
    writer = StringTableWriter(tmp_path, "words")
    for word in WORDS:
        writer.add(word)
    writer.close()
    return StringTable(tmp_path, "words")


def test_take_equals_row_reads(table):
    rows = [5, 0, 0, 2, 1, 4, 3]
    assert table.take(rows) == [table[i] for i in rows] == [WORDS[i] for i in rows]
    assert table.take([]) == []
    with pytest.raises(IndexError, match="words"):
        table.take([0, len(WORDS)])
    with pytest.raises(IndexError, match="words"):
        table.take([-1])


def test_take_names_damaged_offsets(tmp_path, table):
    offsets = np.load(tmp_path / "words.offsets.npy")
    offsets[3] = offsets[-1] + 10  # row 2 ends, and row 3 starts, past the blob
    np.save(tmp_path / "words.offsets.npy", offsets, allow_pickle=False)
    damaged = StringTable(tmp_path, "words")
    assert damaged.take([0, 1]) == WORDS[:2]
    with pytest.raises(ArtifactCorruptError, match="row 2 points outside the blob"):
        damaged.take([0, 2])
