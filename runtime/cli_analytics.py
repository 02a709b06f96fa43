"""`vigil views test` (and the other analytics verbs): thin wrappers over the `analytics` package."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from runtime.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    views = sub.add_parser("views", help="SQL-on-FHIR v2 ViewDefinitions: conformance suite")
    actions = views.add_subparsers(required=True, metavar="ACTION")
    test = actions.add_parser("test", help="run a SQL-on-FHIR v2 conformance test folder")
    test.add_argument("dir", type=Path, help="folder of the suite's test files (*.json)")
    test.add_argument("--report", type=Path, help="write the suite's JSON report (test-report.schema.json) here")
    test.set_defaults(func=_views_test)


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
