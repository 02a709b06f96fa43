"""A ViewDefinition as a SQL view for DuckDB, Spark SQL or Synapse serverless, over an exported lake.

Every form reads the lake ``vigil export`` writes (``result/<Type>/yyyy/MM/dd/<run>/*.parquet`` and the
tombstones in ``deleted/``), keeps the latest version of each resource by ``meta.versionId`` (then
``meta.lastUpdated``), drops a resource whose latest event is a tombstone (as ``vigil views run`` does,
``duck.py``), and computes the view's columns in SQL from the ViewDefinition (``compiler.py``).

Paths end in ``*.parquet`` rather than Synapse's usual ``/**``: NDJSON files sit beside the Parquet in the
same run folders, and a Parquet reader must not be handed them. The layout's depth is fixed, so Spark and
Synapse use ``*/*/*/*/*.parquet`` (yyyy/MM/dd/run/file); DuckDB globs ``**/*.parquet``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from analytics.views.definition import CompiledView, compile_view
from analytics.views.sqlgen.backend import Plan, SqlGenError
from analytics.views.sqlgen.plan import plan_view
from analytics.views.sqlgen.struct import StructBackend, to_spark
from analytics.views.sqlgen.tsql import UTF8, TsqlBackend

DIALECTS = ("duckdb", "spark", "synapse")
_LAYOUT = "*/*/*/*/*.parquet"  # yyyy/MM/dd/run/file (docs/analytics.md, "Layout")


@dataclass
class GeneratedView:
    name: str
    dialect: str
    resource: str
    statements: list[str]  # to run in order
    select: str  # the view's query (Synapse: with the OPENROWSET sources in place)
    # Synapse: the query with each OPENROWSET(...) WITH (...) replaced by a table name, which sqlglot parses
    # (it cannot parse OPENROWSET(BULK ...)), and the text each name stands for.
    parseable_select: str = ""
    rowsets: dict[str, str] = field(default_factory=dict)

    def script(self) -> str:
        return "\n".join(s.rstrip() + ("" if s.rstrip().endswith(";") else ";") for s in self.statements) + "\n"


def lake_schema(lake: Path, resource: str) -> pa.Schema | None:
    """The Arrow schema ``vigil export`` keeps for ``resource`` in ``lake`` (None when it has none)."""
    from analytics.export.schema import SchemaStore

    return SchemaStore(lake / "_vigil" / "schema").get(resource)


def _join_root(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def generate(view: Mapping[str, Any] | CompiledView, dialect: str, *, root: str, schema: pa.Schema | None = None,
             tombstones: bool = True, name: str | None = None, data_source: str | None = None) -> GeneratedView:
    """``view`` as SQL for ``dialect`` reading the lake at ``root`` (a folder, or a URL for Spark/Synapse).

    ``schema`` is the lake's Arrow schema of the view's resource type: elements it lacks become empty values
    (without it every element the view reads must exist as a column). ``tombstones=False`` leaves out the
    ``deleted/`` folder, for a lake that has none yet (a reader fails on a path with no files).
    """
    compiled = view if isinstance(view, CompiledView) else compile_view(dict(view))
    view_name = name or compiled.name
    if not view_name:
        raise SqlGenError("ViewDefinition: a name is needed to name the SQL view")
    if dialect not in DIALECTS:
        raise SqlGenError(f"unknown dialect {dialect!r}; choose one of {', '.join(DIALECTS)}")
    if dialect == "synapse":
        return _synapse(compiled, view_name, root, schema, tombstones, data_source)
    return _struct(compiled, view_name, dialect, root, schema, tombstones)


def _struct(view: CompiledView, name: str, dialect: str, root: str, schema: pa.Schema | None,
            tombstones: bool) -> GeneratedView:
    plan = plan_view(view, StructBackend(), schema)
    spark = dialect == "spark"
    ex = to_spark if spark else (lambda e: e)

    def q(n: str) -> str:
        return f"`{n}`" if spark else f'"{n}"'

    rtype = view.resource
    statements: list[str] = []
    if spark:
        live_src, dead_src = q(f"vigil_{rtype.lower()}_result"), q(f"vigil_{rtype.lower()}_deleted")
        kinds = ("result", "deleted") if tombstones else ("result",)
        for kind, src in zip(kinds, (live_src, dead_src), strict=False):
            path = _join_root(root, kind, rtype, _LAYOUT)
            # mergeSchema: older files lack fields a later export added (the schema only widens).
            statements.append(f"CREATE OR REPLACE TEMPORARY VIEW {src} USING parquet "
                              f"OPTIONS (path '{path}', mergeSchema 'true')")
    else:
        live_src = f"read_parquet('{_join_root(root, 'result', rtype, '**', '*.parquet')}', union_by_name = true)"
        dead_src = f"read_parquet('{_join_root(root, 'deleted', rtype, '**', '*.parquet')}', union_by_name = true)"
    # As `vigil views run` (analytics/views/duck.py): by versionId where it is a number, else by lastUpdated.
    version = ex('TRY_CAST("meta"."versionId" AS BIGINT)')
    stamp = ex('TRY_CAST("meta"."lastUpdated" AS TIMESTAMPTZ)')
    live_version = ex('TRY_CAST("live"."meta"."versionId" AS BIGINT)')
    live_stamp = ex('TRY_CAST("live"."meta"."lastUpdated" AS TIMESTAMPTZ)')
    order = f"{version} DESC NULLS LAST, {stamp} DESC"
    ctes = [f"{q('live')} AS (SELECT *, row_number() OVER (PARTITION BY {q('id')} ORDER BY {order}) AS "
            f"{q('_vigil_rank')} FROM {live_src})"]
    if tombstones:
        tomb = q("tomb")
        ctes.append(f"{tomb} AS (SELECT {q('id')}, max({version}) AS {q('gone')}, max({stamp}) AS {q('gone_at')} "
                    f"FROM {dead_src} GROUP BY {q('id')})")
        ctes.append(f"{q('resource')} AS (SELECT {q('live')}.* FROM {q('live')} LEFT JOIN {tomb} ON "
                    f"{tomb}.{q('id')} = {q('live')}.{q('id')} WHERE {q('live')}.{q('_vigil_rank')} = 1 AND "
                    f"({tomb}.{q('id')} IS NULL OR CASE WHEN {tomb}.{q('gone')} IS NOT NULL AND {live_version} IS "
                    f"NOT NULL THEN {tomb}.{q('gone')} < {live_version} ELSE {tomb}.{q('gone_at')} < {live_stamp} "
                    f"END))")
    else:
        ctes.append(f"{q('resource')} AS (SELECT * FROM {q('live')} WHERE {q('_vigil_rank')} = 1)")
    joins = []
    for join in plan.joins:
        items = ex(join.items)
        if spark:
            joins.append(f"LATERAL VIEW {'OUTER ' if join.outer else ''}explode({items}) {q(join.alias)} AS "
                         f"{q('item')}")
        elif join.outer:
            joins.append(f"LEFT JOIN LATERAL (SELECT unnest({items}) AS {q('item')}) AS {q(join.alias)} ON TRUE")
        else:
            joins.append(f"CROSS JOIN LATERAL (SELECT unnest({items}) AS {q('item')}) AS {q(join.alias)}")
    select = _select(plan, ex, q, joins, ctes)
    create = "CREATE OR REPLACE TEMPORARY VIEW" if spark else "CREATE OR REPLACE VIEW"
    statements.append(f"{create} {q(name)} AS\n{select}")
    return GeneratedView(name=name, dialect="spark" if spark else "duckdb", resource=rtype, statements=statements,
                         select=select, parseable_select=select)


def _select(plan: Plan, ex: Any, q: Any, joins: list[str], ctes: list[str]) -> str:
    cols = ",\n  ".join(f"{ex(expr)} AS {q(col)}" for col, expr in plan.columns)
    lines = ["WITH " + ",\n".join(ctes), f"SELECT\n  {cols}", f"FROM {q('resource')} AS {q('r')}"]
    lines += joins
    if plan.filters:
        lines.append("WHERE " + "\n  AND ".join(ex(f) for f in plan.filters))
    return "\n".join(lines)


def _rowset(root: str, kind: str, rtype: str, columns: Mapping[str, str], data_source: str | None) -> str:
    path = _join_root(root, kind, rtype, _LAYOUT)
    source = f", DATA_SOURCE = '{data_source}'" if data_source else ""
    with_ = ", ".join(f"[{n}] {t}" for n, t in columns.items())
    return f"OPENROWSET(BULK '{path}'{source}, FORMAT = 'PARQUET') WITH ({with_})"


def _synapse(view: CompiledView, name: str, root: str, schema: pa.Schema | None, tombstones: bool,
             data_source: str | None) -> GeneratedView:
    backend = TsqlBackend()
    plan = plan_view(view, backend, schema)
    rtype = view.resource
    # As `vigil views run` (analytics/views/duck.py): by versionId where it is a number, else by lastUpdated.
    version = "TRY_CAST(JSON_VALUE({t}.[meta], '$.versionId') AS BIGINT)"
    stamp = "TRY_CAST(JSON_VALUE({t}.[meta], '$.lastUpdated') AS DATETIMEOFFSET)"
    ctes = [f"[live] AS (SELECT [r].*, ROW_NUMBER() OVER (PARTITION BY [r].[id] ORDER BY "
            f"{version.format(t='[r]')} DESC, {stamp.format(t='[r]')} DESC) AS [_vigil_rank] "
            f"FROM [__rowset_result] AS [r])"]
    rowsets = {"[__rowset_result]": _rowset(root, "result", rtype, backend.columns, data_source)}
    if tombstones:
        rowsets["[__rowset_deleted]"] = _rowset(
            root, "deleted", rtype, {"id": f"VARCHAR(64) COLLATE {UTF8}", "meta": "VARCHAR(MAX)"}, data_source)
        ctes.append(f"[tomb] AS (SELECT [d].[id], MAX({version.format(t='[d]')}) AS [gone], "
                    f"MAX({stamp.format(t='[d]')}) AS [gone_at] FROM [__rowset_deleted] AS [d] GROUP BY [d].[id])")
        ctes.append(f"[resource] AS (SELECT [live].* FROM [live] LEFT JOIN [tomb] ON [tomb].[id] = [live].[id] "
                    f"WHERE [live].[_vigil_rank] = 1 AND ([tomb].[id] IS NULL OR CASE WHEN [tomb].[gone] IS NOT "
                    f"NULL AND {version.format(t='[live]')} IS NOT NULL THEN CASE WHEN [tomb].[gone] < "
                    f"{version.format(t='[live]')} THEN 1 ELSE 0 END ELSE CASE WHEN [tomb].[gone_at] < "
                    f"{stamp.format(t='[live]')} THEN 1 ELSE 0 END END = 1))")
    else:
        ctes.append("[resource] AS (SELECT * FROM [live] WHERE [_vigil_rank] = 1)")
    joins = [j.items for j in plan.joins]
    parseable = _select(plan, lambda e: e, lambda n: f"[{n}]", joins, ctes)
    select = parseable
    for token, text in rowsets.items():
        select = select.replace(token, text)
    statement = f"CREATE OR ALTER VIEW [{name}] AS\n{select}"
    return GeneratedView(name=name, dialect="synapse", resource=rtype, statements=[statement], select=select,
                         parseable_select=parseable, rowsets=rowsets)


__all__ = ["DIALECTS", "GeneratedView", "SqlGenError", "generate", "lake_schema"]
