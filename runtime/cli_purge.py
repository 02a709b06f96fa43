"""`vigil purge [--dry-run] [--json]` — apply the retention settings now (runtime/retention.py)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from runtime.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    purge = sub.add_parser("purge", help="remove health data older than the retention settings (never pending work)")
    purge.add_argument("--dry-run", action="store_true", help="count what would be removed, remove nothing")
    purge.add_argument("--json", action="store_true", help="machine-readable output")
    purge.set_defaults(func=_purge)


def _purge(args: argparse.Namespace, settings: Settings) -> int:
    from runtime.bootstrap import bootstrap
    from runtime.retention import apply_retention

    services = bootstrap(settings)
    try:
        report = apply_retention(services, dry_run=args.dry_run)
    finally:
        services.close()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    print(f"{'dry run: ' if args.dry_run else ''}retention applied to {settings.data_dir}")
    dl, out, bus = report.dead_letters, report.outbox, report.bus
    print("  dead letters: " + _line(dl, verb, lambda r: (
        f"{r['deleted']} replayed ones; the payloads of {r['payloads_erased']} never replayed (their record stays)")))
    print("  outbox:       " + _line(out, verb, lambda r: (
        f"{r['deleted']} message files, {r['abandoned_tmp_deleted']} abandoned temp files; {r['kept']} newer kept")))
    print("  bus:          " + _line(bus, verb, lambda r: (
        f"{r['deleted']} workflow events; {r['pending_kept']} pending messages kept (never purged)")))
    return 0


def _line(part: dict[str, Any], verb: str, text: Callable[[dict[str, Any]], str]) -> str:
    if part.get("kept_forever"):
        return "kept forever (retention 0)"
    if part.get("not_used"):
        return "not used with these settings"
    return f"older than {part['retention_days']:g} days, {verb}: {text(part)}"
