"""`vigil templates check|presets` — dry-run mapping templates on sample messages."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from runtime.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    templates = sub.add_parser("templates", help="check MedTech-compatible mapping templates")
    actions = templates.add_subparsers(required=True, metavar="ACTION")
    check = actions.add_parser(
        "check", help="validate device and FHIR mapping templates and show what each message would become")
    check.add_argument("messages", nargs="?", help="JSON Lines or a JSON array of sample messages (or -)")
    check.add_argument("--device", type=Path, help="device mapping file (default: the configured templates)")
    check.add_argument("--fhir", type=Path, help="FHIR mapping file (default: the configured templates)")
    check.add_argument("--preset", help="use a shipped preset instead (see `vigil templates presets`)")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument(
        "--merge",
        action="store_true",
        help="take the messages as one delivery: readings of several messages that fall in one "
        "Observation (hourly SampledData, a correlation id) are merged into it, as the pipeline does",
    )
    check.set_defaults(func=_check)
    presets = actions.add_parser("presets", help="list the shipped presets and their files")
    presets.set_defaults(func=_presets)


def _check(args: argparse.Namespace, settings: Settings) -> int:
    from common.clock import parse_instant
    from common.jsonnum import dumps
    from ingest.batches import split_messages
    from ingest.templates.check import check_templates
    from ingest.templates.presets import preset_paths

    if args.preset:
        try:
            device, fhir = preset_paths(args.preset)
        except ValueError as exc:
            print(f"vigil: {exc}", file=sys.stderr)
            return 2
    else:
        default_device, default_fhir = settings.template_paths()
        device, fhir = args.device or default_device, args.fhir or default_fhir
    messages: list[bytes] = []
    if args.messages:
        try:
            data = sys.stdin.buffer.read() if args.messages == "-" else Path(args.messages).read_bytes()
        except OSError as exc:
            print(f"vigil: cannot read {args.messages}: {exc.strerror}", file=sys.stderr)
            return 2
        messages = split_messages(data)
    # Judged as the ingest handler judges them: at the host's clock (VIGIL_AS_OF in a simulation)
    # and with its clock skew, so a reading it would dead-letter as future_reading is one here too.
    now = parse_instant(settings.as_of) if settings.as_of else datetime.now(UTC)
    report = check_templates(device, fhir, messages, merge=args.merge, now=now,
                             max_future_skew=timedelta(seconds=settings.max_future_skew_s))
    if args.json:
        print(dumps(report.to_dict(), indent=2, default=str))  # Quantity values as written
    else:
        print(f"device templates: {device}\nFHIR templates:   {fhir}")
        print(report.to_text())
    return 0 if report.ok else 1


def _presets(args: argparse.Namespace, settings: Settings) -> int:
    from ingest.templates.presets import list_presets, preset_paths

    for name in list_presets():
        device, fhir = preset_paths(name)
        print(f"{name:<16} {device}\n{'':<16} {fhir}")
    return 0
