"""Materializing ViewDefinitions into DuckDB from an exported lake (`vigil views run`, `vigil sql`).

DuckDB reads the lake's Parquet, keeps the latest version of each resource (by ``meta.versionId``) that no
later tombstone deletes, and hands the resources to the ViewDefinition runner in batches; the rows become a
DuckDB table named after the view. The runner, not generated SQL, defines the rows, so a view means the same
in DuckDB as in the conformance suite.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa

from analytics.export.schema import strip_null_fields
from analytics.views.definition import CompiledView, compile_view
from analytics.views.runner import iter_rows

_BATCH = 10_000
# FHIR primitive -> Arrow type of the column (SQL-on-FHIR leaves dates as text; DuckDB casts them on demand).
_TYPES = {"boolean": pa.bool_(), "integer": pa.int64(), "positiveInt": pa.int64(), "unsignedInt": pa.int64(),
          "integer64": pa.int64(), "decimal": pa.float64()}


def shipped_views() -> dict[str, dict[str, Any]]:
    """The RPM views Vigil ships (``analytics/views/rpm/*.json``), by name."""
    folder = resources.files("analytics.views").joinpath("rpm")
    out = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            view = json.loads(entry.read_text("utf-8"))
            out[view["name"]] = view
    return out


def _glob(lake: Path, kind: str, resource_type: str) -> str:
    return str(lake / kind / resource_type / "**" / "*.parquet")


def latest_resources(con: Any, lake: Path, resource_type: str) -> Iterator[dict[str, Any]]:
    """The current resources of one type in the lake (latest version, deletes applied)."""
    live = _glob(lake, "result", resource_type)
    if not list((lake / "result" / resource_type).rglob("*.parquet")):
        return
    deleted = list((lake / "deleted" / resource_type).rglob("*.parquet"))
    # Latest by versionId where versions are numbers (the embedded store's), else by lastUpdated (a server
    # whose version ids are UUIDs, as Medplum's): a de-identified lake shifts lastUpdated per patient or
    # zeroes its time but keeps versionId, so the number decides where there is one. A tombstone removes
    # the resource when it is newer by the same rule (its versionId is "" when the server gave none).
    version, stamp = "TRY_CAST(meta.versionId AS BIGINT)", "TRY_CAST(meta.lastUpdated AS TIMESTAMPTZ)"
    tomb = (f"LEFT JOIN (SELECT id AS tid, max({version}) AS gone, max({stamp}) AS gone_at FROM read_parquet("
            f"'{_glob(lake, 'deleted', resource_type)}', union_by_name = true) GROUP BY id) t ON t.tid = r.id "
            f"WHERE t.tid IS NULL OR CASE WHEN t.gone IS NOT NULL AND TRY_CAST(r.meta.versionId AS BIGINT) IS NOT "
            f"NULL THEN t.gone < TRY_CAST(r.meta.versionId AS BIGINT) "
            f"ELSE t.gone_at < TRY_CAST(r.meta.lastUpdated AS TIMESTAMPTZ) END" if deleted else "")
    sql = (f"SELECT r.* FROM (SELECT * FROM read_parquet('{live}', union_by_name = true) QUALIFY row_number() "
           f"OVER (PARTITION BY id ORDER BY {version} DESC NULLS LAST, {stamp} DESC) = 1) r " + tomb)
    reader = con.sql(sql).to_arrow_reader(_BATCH)
    for batch in reader:
        for row in batch.to_pylist():
            yield strip_null_fields(row)


def _table(view: CompiledView, rows: list[dict[str, Any]]) -> pa.Table:
    fields = []
    for name, ctype, collection in _columns(view):
        t = _TYPES.get(ctype or "", pa.string())
        fields.append(pa.field(name, pa.list_(t) if collection else t))
    schema = pa.schema(fields)
    return pa.Table.from_pylist(rows, schema=schema)


def _columns(view: CompiledView) -> list[tuple[str, str | None, bool]]:
    out: list[tuple[str, str | None, bool]] = []

    def visit(sel: Any) -> None:
        out.extend((c.name, c.type, c.collection) for c in sel.columns)
        for sub in sel.selects:
            visit(sub)
        if sel.union_all:
            visit(sel.union_all[0])

    visit(view.root)
    return out


def materialize(lake: Path, db_path: Path, *, names: list[str] | None = None,
                views: dict[str, dict[str, Any]] | None = None) -> dict[str, int]:
    """Build one DuckDB table per view from ``lake``; return the row count per view."""
    import duckdb

    catalog = views if views is not None else shipped_views()
    wanted = names or sorted(catalog)
    unknown = [n for n in wanted if n not in catalog]
    if unknown:
        raise KeyError(f"no view named {', '.join(unknown)}; known: {', '.join(sorted(catalog))}")
    counts: dict[str, int] = {}
    con = duckdb.connect(str(db_path))
    reader = duckdb.connect()  # reading the lake while writing the tables needs its own connection
    try:
        for name in wanted:
            view = compile_view(catalog[name])
            first = True
            counts[name] = 0
            batch: list[dict[str, Any]] = []

            def flush(rows: list[dict[str, Any]], create: bool, view: CompiledView = view, name: str = name) -> None:
                arrow = _table(view, rows)  # noqa: F841 - DuckDB reads the local by name
                if create:
                    con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM arrow')
                else:
                    con.execute(f'INSERT INTO "{name}" SELECT * FROM arrow')

            for row in iter_rows(view, latest_resources(reader, lake, view.resource)):
                batch.append(row)
                if len(batch) >= _BATCH:
                    flush(batch, first)
                    counts[name] += len(batch)
                    first, batch = False, []
            if batch or first:
                flush(batch, first)
                counts[name] += len(batch)
    finally:
        reader.close()
        con.close()
    return counts


def query(db_path: Path, sql: str) -> list[tuple[Any, ...]]:
    import duckdb

    con = duckdb.connect(str(db_path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def query_with_columns(db_path: Path, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    import duckdb

    con = duckdb.connect(str(db_path), read_only=True)
    try:
        cur = con.execute(sql)
        return [d[0] for d in cur.description], cur.fetchall()
    finally:
        con.close()
