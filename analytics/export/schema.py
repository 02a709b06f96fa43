"""A stable, nested Parquet schema per resource type, kept beside the export and only ever widened.

Resources become Arrow structs and lists as deep as the data goes (no JSON strings below some depth, the
FHIR-Analytics-Pipelines limitation its issue #321 asks to lift). The schema is learned from the data and
persisted: a field keeps the type it was first given, a new field is appended, so every file of a type reads
with one schema (older files simply lack newer fields; readers union by name). Two rules make it stable:

- every JSON number is DOUBLE: FHIR ``decimal`` values arrive as ``72`` then ``72.5``; a column that started
  as INT64 would change type. Integers up to 2**53 round-trip exactly.
- every string stays a string: FHIR dates may be partial (``2024-05``), so nothing is parsed as a timestamp;
  views cast.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.json as pajson


class SchemaConflict(ValueError):
    """One field seen with two incompatible JSON types (e.g. a string and an object)."""


def _normalise(t: pa.DataType) -> pa.DataType:
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return pa.float64()
    if pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_time(t):
        return pa.string()
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _normalise(f.type)) for f in t])
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(_normalise(t.value_type))
    return t


def merge_type(old: pa.DataType, new: pa.DataType, where: str) -> pa.DataType:
    """``old`` widened by what ``new`` adds; the order and types of ``old``'s fields never change."""
    if pa.types.is_null(new) or old.equals(new):
        return old
    if pa.types.is_null(old):
        return new
    if pa.types.is_struct(old) and pa.types.is_struct(new):
        fields = []
        seen = set()
        for f in old:
            seen.add(f.name)
            idx = new.get_field_index(f.name)
            fields.append(
                f if idx < 0 else pa.field(f.name, merge_type(f.type, new.field(idx).type, f"{where}.{f.name}"))
            )
        fields.extend(f for f in new if f.name not in seen)
        return pa.struct(fields)
    if pa.types.is_list(old) and pa.types.is_list(new):
        return pa.list_(merge_type(old.value_type, new.value_type, f"{where}[]"))
    raise SchemaConflict(f"{where} was {old} and is now {new}")


def merge_schema(old: pa.Schema | None, new: pa.Schema, resource_type: str) -> pa.Schema:
    merged = merge_type(pa.struct(list(old) if old is not None else []), pa.struct(list(new)), resource_type)
    return pa.schema(list(merged))


class SchemaStore:
    """The persisted schema of each resource type (Arrow IPC schema files)."""

    def __init__(self, directory: Path, fetch: Callable[[str], bytes | None] | None = None) -> None:
        self.directory = directory
        self._cache: dict[str, pa.Schema | None] = {}
        # A remote destination keeps the schemas; `fetch(name)` reads one there (None: not there yet),
        # and `changed` says which to upload when the run commits.
        self._fetch = fetch
        self.changed: set[str] = set()

    def _path(self, resource_type: str) -> Path:
        return self.directory / f"{resource_type}.arrow-schema"

    def get(self, resource_type: str) -> pa.Schema | None:
        if resource_type not in self._cache:
            path = self._path(resource_type)
            data = path.read_bytes() if path.exists() else self._fetch(path.name) if self._fetch else None
            self._cache[resource_type] = pa.ipc.read_schema(pa.py_buffer(data)) if data is not None else None
        return self._cache[resource_type]

    def put(self, resource_type: str, schema: pa.Schema) -> None:
        cached = self._cache.get(resource_type)
        if cached is not None and cached.equals(schema):
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(resource_type)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(schema.serialize().to_pybytes())
        os.replace(tmp, path)
        self._cache[resource_type] = schema
        self.changed.add(path.name)


def table_from_ndjson(data: bytes, resource_type: str, schemas: SchemaStore) -> pa.Table:
    """Parse NDJSON resources into a table with the type's persisted schema, widening it when needed."""
    known = schemas.get(resource_type)
    options = pajson.ParseOptions(explicit_schema=known, unexpected_field_behavior="infer") if known else None
    try:
        table = pajson.read_json(io.BytesIO(data), parse_options=options)
        normalised = pa.schema([pa.field(f.name, _normalise(f.type)) for f in table.schema])
        schema = merge_schema(known, normalised, resource_type)
    except pa.ArrowInvalid as exc:
        raise SchemaConflict(f"{resource_type}: {exc}") from exc
    if not table.schema.equals(schema):
        # Parse again with the widened schema: Arrow parses straight into it (ints as doubles, strings kept).
        try:
            table = pajson.read_json(io.BytesIO(data), parse_options=pajson.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="error"))
        except pa.ArrowInvalid as exc:
            raise SchemaConflict(f"{resource_type}: {exc}") from exc
    schemas.put(resource_type, schema)
    return table


def strip_nulls(value: object) -> object:
    """A row read back from Parquet as the JSON it came from: absent fields are nulls in a struct schema."""
    if isinstance(value, dict):
        return strip_null_fields(value)
    if isinstance(value, list):
        return [strip_nulls(v) for v in value]
    return value


def strip_null_fields(row: dict[str, Any]) -> dict[str, Any]:
    """:func:`strip_nulls` of one row (a resource), which stays a dict."""
    return {k: strip_nulls(v) for k, v in row.items() if v is not None}
