"""Read and validate entity catalogs, streaming one entity at a time.

An entity is a dict ``{"id": str, "name": str, "aliases": [str, ...], **metadata}``.
Sources: an iterable of such dicts, or a path to a ``.csv`` (aliases ``|``-separated),
``.jsonl``, ``.json`` or ``.parquet`` file (with pyarrow installed; typed columns, aliases
a list or ``|``-separated string). Every error names the offending row (1-based).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import CatalogError

#: Texts longer than this many characters are cut before encoding (documented cap).
MAX_TEXT_CHARS = 2048
_REQUIRED_COLUMNS = ("id", "name")

Entity = dict[str, Any]


def read_catalog(source: Iterable[Mapping[str, Any]] | str | os.PathLike[str]) -> Iterator[Entity]:
    """Yield validated entities from ``source``; raises :class:`CatalogError` naming the row.

    Ids must be unique non-empty strings, names non-empty strings, aliases strings.
    Empty aliases are dropped. An empty catalog is an error.
    """
    rows = _iter_rows(source) if isinstance(source, str | os.PathLike) else _iter_dicts(source)
    seen: set[str] = set()
    count = 0
    for where, row in rows:
        entity = validate_entity(row, where)
        if entity["id"] in seen:
            raise CatalogError(f"{where}: duplicate id {entity['id']!r}; ids must be unique")
        seen.add(entity["id"])
        count += 1
        yield entity
    if count == 0:
        raise CatalogError("the catalog is empty: give at least one entity with an id and a name")


def validate_entity(row: Mapping[str, Any], where: str) -> Entity:
    """Return a clean copy of one catalog row, or raise :class:`CatalogError` naming ``where``."""
    if not isinstance(row, Mapping):
        raise CatalogError(
            f"{where}: expected a mapping with 'id' and 'name', got {type(row).__name__}"
        )
    entity: Entity = {}
    for field in _REQUIRED_COLUMNS:
        value = row.get(field)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise CatalogError(f"{where}: missing {field!r}; every entity needs an id and a name")
        if not isinstance(value, str):
            raise CatalogError(
                f"{where}: {field!r} must be a string, got {type(value).__name__} {value!r}"
            )
        if not value.strip():
            raise CatalogError(f"{where}: {field!r} is empty; give a non-empty string")
        entity[field] = value
    entity["aliases"] = _aliases(row.get("aliases"), where)
    for key, value in row.items():
        if key not in entity:
            entity[key] = _json_safe(value, f"{where}, field {key!r}")
    return entity


def _aliases(value: Any, where: str) -> list[str]:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return []
    items = value.split("|") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise CatalogError(
            f"{where}: 'aliases' must be a list of strings or a '|'-separated string"
        )
    out: list[str] = []
    for alias in items:
        if not isinstance(alias, str):
            raise CatalogError(
                f"{where}: every alias must be a string, got {type(alias).__name__} {alias!r}"
            )
        if alias.strip():
            out.append(alias)
    return out


def _json_safe(value: Any, where: str) -> Any:
    """Check that metadata survives a JSON round trip (no NaN, no objects)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CatalogError(
            f"{where}: metadata must be JSON-serialisable without NaN ({exc})"
        ) from None
    return value


def _iter_dicts(items: Iterable[Mapping[str, Any]]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    if isinstance(items, Mapping | bytes):
        raise CatalogError("entities must be an iterable of dicts or a path to a catalog file")
    for number, item in enumerate(items, start=1):
        yield f"entity {number}", item


def _iter_rows(path: str | os.PathLike[str]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"{path}: catalog file not found")
    suffix = path.suffix.lower()
    readers = {".csv": _csv_rows, ".jsonl": _jsonl_rows, ".json": _json_rows,
               ".parquet": _parquet_rows}  # fmt: skip
    if suffix not in readers:
        raise CatalogError(
            f"{path}: unsupported catalog format {suffix!r}; use .csv, .jsonl, .json or .parquet"
        )
    try:
        yield from readers[suffix](path)
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def _csv_rows(path: Path) -> Iterator[tuple[str, Mapping[str, Any]]]:
    # utf-8-sig drops a leading byte-order mark, so a BOM never ends up inside the 'id' header.
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in _REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise CatalogError(
                f"{path}: missing column(s) {missing}; found {columns}. "
                "A catalog CSV needs 'id' and 'name' (and optionally 'aliases', '|'-separated)"
            )
        for row in reader:
            if None in row:
                raise CatalogError(
                    f"{path}, line {reader.line_num}: more fields than header columns"
                )
            yield f"{path}, line {reader.line_num}", row


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Mapping[str, Any]]]:
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield f"{path}, line {number}", _loads(line, f"{path}, line {number}")


def _json_rows(path: Path) -> Iterator[tuple[str, Mapping[str, Any]]]:
    with open(path, encoding="utf-8-sig") as handle:
        data = _loads(handle.read(), str(path))
    if isinstance(data, Mapping) and isinstance(data.get("entities"), list):
        data = data["entities"]
    if not isinstance(data, list):
        raise CatalogError(f"{path}: expected a JSON list of entities (or {{'entities': [...]}})")
    for number, item in enumerate(data, start=1):
        yield f"{path}, entity {number}", item


def _parquet_rows(path: Path) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Rows of a Parquet file, read in record batches (pyarrow, imported here)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CatalogError(
            f"{path}: reading Parquet catalogs needs pyarrow (pip install pyarrow)"
        ) from None
    try:
        handle = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own error types for damaged files
        raise CatalogError(f"{path}: unreadable Parquet file ({exc})") from None
    missing = [c for c in _REQUIRED_COLUMNS if c not in handle.schema_arrow.names]
    if missing:
        raise CatalogError(
            f"{path}: missing column(s) {missing}; found {handle.schema_arrow.names}"
        )
    number = 0
    for batch in handle.iter_batches(batch_size=65536):
        for row in batch.to_pylist():
            number += 1
            yield f"{path}, row {number}", row


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogError(f"{where}: invalid JSON ({exc.msg})") from None
