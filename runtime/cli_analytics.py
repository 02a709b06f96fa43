"""`vigil views test`, `vigil export`, `vigil deidentify`: thin wrappers over the `analytics` package."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from runtime.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    views = sub.add_parser(
        "views", help="SQL-on-FHIR v2 ViewDefinitions: list, run into DuckDB, print as SQL, conformance suite")
    actions = views.add_subparsers(required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list the shipped RPM views")
    listing.set_defaults(func=_views_list)
    run = actions.add_parser("run", help="materialize views into DuckDB from an exported lake")
    run.add_argument("lake", type=Path, help="the export destination (holds result/ and deleted/)")
    run.add_argument("names", nargs="*", help="views to build (default: all shipped views)")
    run.add_argument("--view", type=Path, action="append", default=[], help="also a ViewDefinition JSON file")
    run.add_argument("--db", type=Path, help="DuckDB file (default: LAKE/views.duckdb)")
    run.set_defaults(func=_views_run)
    gen = actions.add_parser("sql", help="print views as SQL for DuckDB, Spark SQL or Synapse serverless")
    gen.add_argument("names", nargs="*", help="views to print (default: all shipped views)")
    gen.add_argument("--dialect", choices=("duckdb", "spark", "synapse"), required=True)
    gen.add_argument("--lake", type=Path,
                     help="a local copy of the export: its schema turns elements never exported into NULLs, "
                          "and views leave out deleted/ for types that have no tombstones yet")
    gen.add_argument("--root", help="the lake's path or URL as the SQL should name it (default: --lake)")
    gen.add_argument("--view", type=Path, action="append", default=[], help="also a ViewDefinition JSON file")
    gen.add_argument("--data-source", help="Synapse: an external data source the --root path is relative to")
    gen.add_argument("--no-deletes", action="store_true", help="do not read the tombstones in deleted/")
    gen.set_defaults(func=_views_sql)
    test = actions.add_parser("test", help="run a SQL-on-FHIR v2 conformance test folder")
    test.add_argument("dir", type=Path, help="folder of the suite's test files (*.json)")
    test.add_argument("--report", type=Path, help="write the suite's JSON report (test-report.schema.json) here")
    test.set_defaults(func=_views_test)

    export = sub.add_parser("export", help="export what changed since the last run to NDJSON and Parquet")
    export.add_argument("dest", nargs="?", help="destination: a folder, or abfss://FS@ACCOUNT.dfs.core.windows.net/"
                        "PATH, https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH (default VIGIL_EXPORT_DEST)")
    export.add_argument("--source", choices=("auto", "embedded", "search", "bulk"), default=None,
                        help="embedded store, a FHIR server's search/_history, or its bulk $export "
                             "(default VIGIL_EXPORT_SOURCE)")
    export.add_argument("--fhir-url", help="the FHIR server a search or bulk source reads (default VIGIL_FHIR_URL)")
    export.add_argument("--type", action="append", default=None,
                        help="a resource type to export from a FHIR server (repeat; default VIGIL_EXPORT_TYPES)")
    export.add_argument("--storage-api", choices=("blob", "dfs"), help="for a path-style (emulator) storage URL")
    export.add_argument("--format", default=None, help="ndjson, parquet or both (default VIGIL_EXPORT_FORMATS)")
    export.add_argument("--grace", type=float, default=None,
                        help="seconds behind now the window ends (default 2, or VIGIL_EXPORT_GRACE_S remote)")
    export.add_argument("--chunk-rows", type=int, default=100_000, help="resources per file (default 100000)")
    export.add_argument("--deidentify", nargs="?", const="safe-harbor", metavar="CONFIG",
                        help="de-identify on the way out: safe-harbor (default), research, or a config file")
    export.add_argument("--no-progress", action="store_true", help="no progress bar")
    export.add_argument("--json", action="store_true", help="print the summary as JSON")
    export.set_defaults(func=_export)

    sql = sub.add_parser("sql", help="run SQL over the materialized views (DuckDB)")
    sql.add_argument("query", help='e.g. "SELECT code, avg(value) FROM vital_signs GROUP BY code"')
    sql.add_argument("--db", type=Path, required=True, help="the DuckDB file `vigil views run` built")
    sql.add_argument("--csv", action="store_true", help="CSV out instead of a table")
    sql.set_defaults(func=_sql)

    deid = sub.add_parser("deidentify", help="de-identify FHIR JSON/NDJSON files (FHIR anonymizer configuration)")
    deid.add_argument("input", type=Path, help="a .json/.ndjson file or a folder of them")
    deid.add_argument("output", type=Path, help="output file or folder (NDJSON)")
    deid.add_argument("--config", default="safe-harbor",
                      help="safe-harbor (default), research, or an anonymizer configuration file")
    deid.add_argument("--no-check", action="store_true", help="skip the check that no input identifier remains")
    deid.set_defaults(func=_deidentify)


def _views_test(args: argparse.Namespace, settings: Settings) -> int:
    from analytics.views.suite import report, run_suite

    try:
        outcomes = run_suite(args.dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return 2
    if args.report:
        args.report.write_text(json.dumps(report(outcomes), indent=2) + "\n", encoding="utf-8")
    failed = [o for o in outcomes if not o.passed]
    for o in failed:
        print(f"FAIL {o.key}: {o.error}")
    print(f"{len(outcomes) - len(failed)}/{len(outcomes)} passed")
    return 1 if failed else 0


def _export(args: argparse.Namespace, settings: Settings) -> int:
    from analytics.export import ExportError, run_export
    from analytics.export.destination import DestinationError
    from analytics.export.http import RemoteError
    from runtime.lake_export import build_destination, build_source, formats_of, source_kind
    from runtime.settings import SettingsError

    kind = source_kind(settings, args.source)
    if kind == "embedded" and not settings.embedded and not args.source:
        print("vigil: with VIGIL_FHIR_URL set, export reads that server: --source search or bulk", file=sys.stderr)
        return 2
    dest = args.dest or settings.export_dest
    if not dest:
        print("vigil: name the destination (a folder or a storage URL), or set VIGIL_EXPORT_DEST", file=sys.stderr)
        return 2
    formats = formats_of(args.format or settings.export_formats)
    grace = args.grace if args.grace is not None else 2.0 if kind == "embedded" else settings.export_grace_s
    types = [t.strip() for arg in args.type for t in arg.split(",") if t.strip()] if args.type else None
    transform = None
    source = destination = None
    try:
        if args.deidentify:
            from analytics.deid.files import transform_for_export

            transform = transform_for_export(args.deidentify, settings.path("deid-keys.json"))
        source = build_source(settings, kind, fhir_url=args.fhir_url, types=types)
        destination = build_destination(settings, dest, args.storage_api)
        summary = run_export(settings.path("fhir.db") if kind == "embedded" else None, destination, source=source,
                             formats=formats, grace_s=grace, chunk_rows=args.chunk_rows, transform=transform,
                             deidentify=args.deidentify, progress=not args.no_progress and sys.stderr.isatty())
    except (ExportError, DestinationError, RemoteError, SettingsError, FileNotFoundError, PermissionError,
            ValueError) as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return 1
    finally:
        if destination is not None:
            destination.close()
        if source is not None:
            source.close()
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
        return 0
    print(f"export {summary.run_id}{' (resumed)' if summary.resumed else ''} from {summary.source} to "
          f"{summary.destination}: {summary.total} changes in {summary.seconds:.1f} s "
          f"({summary.per_second:,.0f}/s), {summary.files} files")
    for rtype in sorted(set(summary.resources) | set(summary.deleted)):
        how = f" [{summary.methods[rtype]}]" if summary.methods.get(rtype) not in (None, "embedded") else ""
        print(f"  {rtype:<24} {summary.resources.get(rtype, 0):>9} resources "
              f"{summary.deleted.get(rtype, 0):>7} deleted{how}")
    if summary.deletes_not_seen:
        print(f"  note: a paged search cannot see deletes; deletes of {', '.join(summary.deletes_not_seen)} "
              "are not in this export (a server with type-level _history, or the embedded store, shows them)")
    return 0


def _deidentify(args: argparse.Namespace, settings: Settings) -> int:
    from analytics.deid import ConfigError, DeidError
    from analytics.deid.files import configured, deidentify_path

    try:
        config = configured(args.config, settings.path("deid-keys.json"))
        summary = deidentify_path(args.input, args.output, config, check=not args.no_check)
    except (ConfigError, DeidError, FileNotFoundError, PermissionError, ValueError) as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return 1
    if summary.leaks:
        found = ", ".join(f"{n} {kind}" for kind, n in sorted(summary.leaks.items()))
        print(f"vigil: not written: the output still holds identifiers of the input ({found}); "
              "add rules for them to the configuration", file=sys.stderr)
        return 1
    print(f"de-identified {summary.resources} resources from {summary.files} files with {config.source}")
    return 0


def _views_list(args: argparse.Namespace, settings: Settings) -> int:
    from analytics.views.duck import shipped_views

    for name, view in shipped_views().items():
        print(f"{name:<16} {view['resource']:<14} {view.get('title', '')}")
    return 0


def _views_asked(args: argparse.Namespace, catalog: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The shipped views plus each `--view FILE`, and the names asked for (NAMES, then the files' views)."""
    names = list(args.names)
    for path in args.view:
        view = json.loads(path.read_text(encoding="utf-8"))
        name = view.get("name") or path.stem
        catalog[name] = view
        names.append(name)
    return catalog, names


def _views_run(args: argparse.Namespace, settings: Settings) -> int:
    from analytics.views import ViewDefinitionError
    from analytics.views.duck import materialize, shipped_views

    try:
        catalog, names = _views_asked(args, shipped_views())
        counts = materialize(args.lake, args.db or args.lake / "views.duckdb", names=names or None, views=catalog)
    except (KeyError, ValueError, ViewDefinitionError, OSError) as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return 1
    for name, n in counts.items():
        print(f"{name:<16} {n:>9} rows")
    return 0


def _views_sql(args: argparse.Namespace, settings: Settings) -> int:
    from analytics.views import ViewDefinitionError
    from analytics.views.duck import shipped_views
    from analytics.views.sqlgen import SqlGenError, generate, lake_schema

    root = args.root or (str(args.lake) if args.lake else None)
    if root is None:
        print("vigil: say where the lake is: --lake DIR (a local export) or --root PATH_OR_URL", file=sys.stderr)
        return 2
    scripts = []
    try:
        catalog, names = _views_asked(args, shipped_views())
        unknown = [n for n in names if n not in catalog]
        if unknown:
            raise KeyError(f"no view named {', '.join(unknown)}; known: {', '.join(sorted(catalog))}")
        for name in names or sorted(catalog):
            view = catalog[name]
            rtype = view.get("resource", "")
            schema = lake_schema(args.lake, rtype) if args.lake else None
            tombstones = not args.no_deletes and (args.lake is None or (args.lake / "deleted" / rtype).exists())
            generated = generate(view, args.dialect, root=root, schema=schema, tombstones=tombstones, name=name,
                                 data_source=args.data_source)
            head = (f"-- {name}: {rtype} as {args.dialect} SQL, generated by `vigil views sql` from its "
                    f"ViewDefinition{'' if tombstones else '; deleted/ not read'}")
            scripts.append(head + "\n" + generated.script())
    except (KeyError, ValueError, ViewDefinitionError, SqlGenError, OSError) as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write("\n".join(scripts))
    return 0


def _sql(args: argparse.Namespace, settings: Settings) -> int:
    import csv

    import duckdb

    from analytics.views.duck import query_with_columns

    try:
        columns, rows = query_with_columns(args.db, args.query)
    except (duckdb.Error, OSError) as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return 1
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
        return 0
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    return 0
