"""Metadata columns: the catalog's extra fields stored column-wise for search-time filters.

Every field of an entity other than ``id``, ``name`` and ``aliases`` becomes a column with
one value per entity row, typed from the values it holds:

- ``"string"``: int32 codes ``col-NNN.npy`` (-1: no value) into a sorted dictionary string
  table ``col-NNN.values.bin`` (so code order is string order, and ranges work on codes);
- ``"int"``: int64 ``col-NNN.npy`` plus bool ``col-NNN.nulls.npy`` when some rows have no
  value; ``"float"``: float64 ``col-NNN.npy``, NaN for no value (ints and floats mixed);
- ``"bool"``: int8 ``col-NNN.npy``, -1 / 0 / 1;
- ``"json"`` (lists, objects, mixed types): nothing stored, not filterable; the values stay
  in ``entities.jsonl``.

A missing field, ``null`` and an empty string are "no value". Files open memory-mapped, no
pickle; the manifest's ``columns`` section names each column's type and file prefix.
"""

from __future__ import annotations

import bisect
import math
import threading
from array import array
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactCorruptError, QueryError
from .arrays import load_array
from .strings import StringTable, StringTableWriter

#: Entity fields that are not metadata.
CORE_FIELDS = ("id", "name", "aliases")
COLUMNS_VERSION = 1
COLUMN_TYPES = ("string", "int", "float", "bool", "json")
#: Condition operators of a ``where`` dict value, e.g. ``{"population": {"gte": 10_000}}``.
OPERATORS = ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte")


def _is_null(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def column_type(values: list[Any]) -> str:
    """The stored type of a column holding ``values`` (no-value entries ignored)."""
    kinds = {type(v) for v in values if not _is_null(v)}
    if not kinds or kinds == {str}:
        return "string"
    if kinds == {bool}:
        return "bool"
    if kinds == {int}:
        return "int"
    if kinds <= {int, float}:
        return "float"
    return "json"


class ColumnWriter:
    """Collects the metadata of entities as they are written; :meth:`close` writes the files."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._rows: dict[str, array] = {}  # field -> entity rows that have it
        self._values: dict[str, list[Any]] = {}
        self.n = 0

    def add(self, entity: Mapping[str, Any]) -> None:
        """Record the metadata fields of the next entity row."""
        for key, value in entity.items():
            if key in CORE_FIELDS or _is_null(value):
                continue
            self._rows.setdefault(key, array("q")).append(self.n)
            self._values.setdefault(key, []).append(value)
        self.n += 1

    def close(self) -> dict[str, Any]:
        """Write every column; returns the manifest's ``columns`` section."""
        fields = {}
        for number, key in enumerate(sorted(self._rows)):
            prefix = f"col-{number:03d}"
            rows = np.frombuffer(self._rows[key], dtype=np.int64)
            kind = column_type(self._values[key])
            fields[key] = {"type": kind, "file": prefix, "rows": int(len(rows))}
            if kind != "json":
                self._write(prefix, kind, rows, self._values[key])
        return {"version": COLUMNS_VERSION, "fields": fields}

    def _write(self, prefix: str, kind: str, rows: np.ndarray, values: list[Any]) -> None:
        path = self.directory / f"{prefix}.npy"
        if kind == "string":
            dictionary = sorted(set(values))
            table = StringTableWriter(self.directory, f"{prefix}.values")
            for text in dictionary:
                table.add(text)
            table.close()
            codes = np.full(self.n, -1, dtype=np.int32)
            lookup = {text: i for i, text in enumerate(dictionary)}
            codes[rows] = np.fromiter((lookup[v] for v in values), np.int32, len(values))
            np.save(path, codes, allow_pickle=False)
        elif kind == "bool":
            flags = np.full(self.n, -1, dtype=np.int8)
            flags[rows] = np.asarray(values, dtype=np.int8)
            np.save(path, flags, allow_pickle=False)
        elif kind == "float":
            numbers = np.full(self.n, np.nan, dtype=np.float64)
            numbers[rows] = np.asarray(values, dtype=np.float64)
            np.save(path, numbers, allow_pickle=False)
        else:  # int
            numbers = np.zeros(self.n, dtype=np.int64)
            numbers[rows] = np.asarray(values, dtype=np.int64)
            np.save(path, numbers, allow_pickle=False)
            if len(rows) < self.n:
                nulls = np.ones(self.n, dtype=bool)
                nulls[rows] = False
                np.save(self.directory / f"{prefix}.nulls.npy", nulls, allow_pickle=False)


class Columns:
    """The metadata columns of one artifact, opened memory-mapped; :meth:`mask` evaluates a
    ``where`` condition to a bool (n_entities,) mask."""

    def __init__(self, directory: Path, section: Mapping[str, Any] | None, n: int) -> None:
        self.directory, self.n = directory, n
        self.fields: dict[str, dict[str, Any]] = {}
        self._arrays: dict[str, np.ndarray] = {}
        self._dictionaries: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        if not section:
            return
        where = f"{directory / 'manifest.json'}: columns"
        if not isinstance(section, Mapping) or section.get("version") != COLUMNS_VERSION:
            raise ArtifactCorruptError(f"{where}: unknown columns version; rebuild the artifact")
        fields = section.get("fields")
        if not isinstance(fields, Mapping):
            raise ArtifactCorruptError(f"{where}: 'fields' is not a mapping")
        for key, info in fields.items():
            if (
                not isinstance(info, Mapping)
                or info.get("type") not in COLUMN_TYPES
                or not isinstance(info.get("file"), str)
                or not info["file"].startswith("col-")
                or "/" in info["file"]
            ):
                raise ArtifactCorruptError(f"{where}: field {key!r} is malformed ({info!r})")
            self.fields[key] = dict(info)

    def names(self) -> list[str]:
        """The column names, sorted."""
        return sorted(self.fields)

    def mask(self, name: str, condition: Any) -> np.ndarray:
        """bool (n,): the entity rows whose ``name`` value meets ``condition``: a value
        (equality), a list/tuple/set (any of), ``None`` (no value), or a dict of
        :data:`OPERATORS` (all must hold). A row with no value meets only ``None``
        (``eq``, or inside ``in``) and ``{"ne": None}``: every comparison, ``ne`` and
        ``not_in`` included, fails on it. A column this artifact lacks has no values."""
        kind = self.fields[name]["type"] if name in self.fields else "missing"
        if kind == "json":
            raise QueryError(
                f"where: column {name!r} holds lists, objects or mixed types and cannot be "
                "filtered; give it one scalar type (string, number or bool)"
            )
        if isinstance(condition, Mapping):
            unknown = sorted(set(condition) - set(OPERATORS))
            if unknown or not condition:
                raise QueryError(
                    f"where[{name!r}]: unknown operator(s) {unknown}; use {list(OPERATORS)}"
                )
            out = np.ones(self.n, dtype=bool)
            for op, value in condition.items():
                out &= self._op(name, kind, op, value)
            return out
        if isinstance(condition, list | tuple | set | frozenset):
            return self._op(name, kind, "in", condition)
        return self._op(name, kind, "eq", condition)

    # -- one operator ----------------------------------------------------------------
    def _op(self, name: str, kind: str, op: str, value: Any) -> np.ndarray:
        data, nulls = self._column(name, kind)
        if op in ("in", "not_in"):
            if not isinstance(value, list | tuple | set | frozenset):
                raise QueryError(f"where[{name!r}]: {op!r} takes a list of values")
            out = np.zeros(self.n, dtype=bool)
            for item in value:
                out |= self._op(name, kind, "eq", item)
            return ~out & ~nulls if op == "not_in" else out
        if value is None:
            if op not in ("eq", "ne"):
                raise QueryError(f"where[{name!r}]: {op!r} needs a value, got None")
            return nulls.copy() if op == "eq" else ~nulls
        if kind == "missing":  # every row has no value: no comparison holds
            return np.zeros(self.n, dtype=bool)
        if kind == "string":
            return self._string_op(name, op, value, data)
        number = _as_number(name, kind, value)
        if kind == "bool" and op not in ("eq", "ne"):
            raise QueryError(f"where[{name!r}]: a bool column takes only eq, ne, in, not_in")
        compare = {"eq": np.equal, "ne": np.not_equal, "gt": np.greater,
                   "gte": np.greater_equal, "lt": np.less, "lte": np.less_equal}[op]  # fmt: skip
        return compare(data, number) & ~nulls

    def _string_op(self, name: str, op: str, value: Any, codes: np.ndarray) -> np.ndarray:
        if not isinstance(value, str):
            raise QueryError(
                f"where[{name!r}]: the column holds strings, got {type(value).__name__} "
                f"{value!r}"
            )
        words = self._dictionary(name)
        at = bisect.bisect_left(words, value)
        found = at < len(words) and words[at] == value
        valid = codes >= 0
        if op == "eq":
            return codes == at if found else np.zeros(self.n, dtype=bool)
        if op == "ne":
            return valid & (codes != at) if found else valid
        if op in ("lt", "gte"):  # codes below the first word >= value are < value
            below = valid & (codes < at)
            return below if op == "lt" else valid & ~below
        upto = at + 1 if found else at  # codes below this are <= value
        within = valid & (codes < upto)
        return within if op == "lte" else valid & ~within

    # -- storage -----------------------------------------------------------------------
    def _column(self, name: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(values, nulls bool (n,)) of column ``name``, loaded at first use (a column
        this artifact lacks: no values)."""
        if kind == "missing":
            return np.zeros(self.n, dtype=np.int8), np.ones(self.n, dtype=bool)
        with self._lock:
            if name not in self._arrays:
                self._arrays[name] = self._load(name, kind)
        data = self._arrays[name]
        if kind == "string" or kind == "bool":
            return data, data < 0
        if kind == "float":
            return data, np.isnan(data)
        nulls_path = self.directory / f"{self.fields[name]['file']}.nulls.npy"
        if nulls_path.exists():
            return data, np.asarray(load_array(nulls_path, np.bool_, ndim=1))
        return data, np.zeros(self.n, dtype=bool)

    def _load(self, name: str, kind: str) -> np.ndarray:
        dtype = {"string": np.int32, "bool": np.int8, "float": np.float64, "int": np.int64}[kind]
        path = self.directory / f"{self.fields[name]['file']}.npy"
        data = load_array(path, dtype, ndim=1)
        if data.shape != (self.n,):
            raise ArtifactCorruptError(
                f"{path}: {len(data)} rows for {self.n} entities; rebuild the artifact"
            )
        return data

    def _dictionary(self, name: str) -> list[str]:
        with self._lock:
            if name not in self._dictionaries:
                table = StringTable(self.directory, f"{self.fields[name]['file']}.values")
                self._dictionaries[name] = table.take(list(range(len(table))))
        return self._dictionaries[name]


def _as_number(name: str, kind: str, value: Any) -> Any:
    """``value`` as the column's type; strings (as the CLI passes them) are parsed."""
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise QueryError(f"where[{name!r}]: the column holds booleans, got {value!r}")
    if isinstance(value, bool):
        raise QueryError(f"where[{name!r}]: the column holds numbers, got {value!r}")
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        try:
            return int(value) if kind == "int" and value.strip().lstrip("-").isdigit() else float(
                value
            )
        except ValueError:
            pass
    raise QueryError(f"where[{name!r}]: the column holds numbers, got {value!r}")
