"""Memory-mapped string tables: a UTF-8 blob plus an int64 offsets ``.npy``.

``NAME.bin`` (or another extension) holds the strings back to back; ``NAME.offsets.npy``
holds ``n + 1`` int64 offsets, so string ``i`` is ``blob[offsets[i]:offsets[i + 1]]``. Both
open with ``mmap``, so opening a table of millions of strings costs no parsing.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

from ..errors import ArtifactCorruptError
from .arrays import load_array

_FEW = 4  # up to this many rows, :meth:`StringTable.take` reads them one by one


class StringTableWriter:
    """Append strings to ``NAME.bin``; :meth:`close` writes ``NAME.offsets.npy``."""

    def __init__(self, directory: Path, name: str, ext: str = ".bin") -> None:
        self.blob_path = directory / f"{name}{ext}"
        self.offsets_path = directory / f"{name}.offsets.npy"
        self._handle = open(self.blob_path, "wb")  # noqa: SIM115 - closed in close()
        self._offsets: list[int] = [0]

    def add(self, text: str) -> None:
        data = text.encode("utf-8")
        self._handle.write(data)
        self._offsets.append(self._offsets[-1] + len(data))

    def add_rows(self, table: StringTable, keep: np.ndarray) -> None:
        """Append the rows of ``table`` where ``keep`` (bool, one per row) is set, in bulk."""
        lengths = np.diff(table.offsets)
        data = np.frombuffer(table.blob, dtype=np.uint8)
        self._handle.write(data[np.repeat(keep, lengths)].tobytes())
        ends = self._offsets[-1] + np.cumsum(lengths[keep])
        self._offsets.extend(ends.tolist())

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def close(self) -> None:
        self._handle.close()
        np.save(self.offsets_path, np.asarray(self._offsets, dtype=np.int64), allow_pickle=False)


class StringTable:
    """Read-only, memory-mapped table of ``n`` strings; ``table[i] -> str``."""

    def __init__(self, directory: Path, name: str, ext: str = ".bin") -> None:
        blob_path = directory / f"{name}{ext}"
        offsets_path = directory / f"{name}.offsets.npy"
        self.offsets = load_array(offsets_path, np.int64, ndim=1)
        size = blob_path.stat().st_size
        if len(self.offsets) == 0 or self.offsets[0] != 0 or self.offsets[-1] != size:
            raise ArtifactCorruptError(
                f"{offsets_path}: offsets do not span {blob_path.name} ({size} bytes); "
                "the artifact is damaged, rebuild it"
            )
        self.offsets = self.offsets.view(np.ndarray)  # plain item access, still mapped
        self.blob: mmap.mmap | bytes = b""
        if size:
            with open(blob_path, "rb") as handle:
                self.blob = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        self.name = name

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        if not 0 <= i < len(self):
            raise IndexError(f"{self.name}: row {i} out of range 0..{len(self) - 1}")
        return self._decode(i, int(self.offsets[i]), int(self.offsets[i + 1]))

    def take(self, rows: list[int]) -> list[str]:
        """The strings at ``rows`` (ints in range), with one offsets lookup for them all."""
        if len(rows) <= _FEW:  # item access beats the array calls' overhead
            return [self[i] for i in rows]
        at = np.asarray(rows, dtype=np.int64)
        if int(at.min()) < 0 or int(at.max()) >= len(self):
            raise IndexError(f"{self.name}: a row of {rows[:5]}... is out of range")
        starts, stops = self.offsets[at].tolist(), self.offsets[at + 1].tolist()
        return [self._decode(*row) for row in zip(rows, starts, stops, strict=True)]

    def _decode(self, i: int, start: int, stop: int) -> str:
        if not 0 <= start <= stop <= len(self.blob):
            raise ArtifactCorruptError(
                f"{self.name}.offsets.npy: row {i} points outside the blob; rebuild the artifact"
            )
        try:
            return self.blob[start:stop].decode("utf-8")
        except UnicodeDecodeError:
            raise ArtifactCorruptError(
                f"{self.name}.bin: row {i} is not valid UTF-8; the artifact is damaged"
            ) from None
