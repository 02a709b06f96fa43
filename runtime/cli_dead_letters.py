"""`vigil dead-letters list|show ID|replay [IDS] [--reason R]`: inspect what could not be processed, and run
it again after a fix."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from runtime.cli_ingest import EXIT_DEAD_LETTERED
from runtime.cli_progress import bar, drain_progress
from runtime.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    dl = sub.add_parser("dead-letters", help="inspect and replay inputs Vigil could not process")
    dls = dl.add_subparsers(required=True, metavar="ACTION")
    ls = dls.add_parser("list", help="list dead letters")
    ls.add_argument("--all", action="store_true", help="include replayed ones")
    ls.add_argument("--reason", help="only this reason")
    ls.set_defaults(func=_dl_list)
    show = dls.add_parser("show", help="show one dead letter with its payload")
    show.add_argument("id", type=int)
    show.set_defaults(func=_dl_show)
    replay = dls.add_parser("replay", help="send dead letters through the pipeline again")
    replay.add_argument("ids", type=int, nargs="*", help="ids to replay (default: all, or --reason)")
    replay.add_argument("--reason", help="only this reason")
    replay.add_argument("--progress", action="store_true", help="show the progress bar even without a terminal")
    replay.set_defaults(func=_dl_replay)


def _services(settings: Settings) -> Any:
    from runtime.bootstrap import bootstrap

    return bootstrap(settings)


def _dl_list(args: argparse.Namespace, settings: Settings) -> int:
    services = _services(settings)
    try:
        rows = services.dead_letters.list(include_replayed=args.all)
        if args.reason:
            rows = [r for r in rows if r.reason == args.reason]
        if not rows:
            print("no dead letters")
        else:
            print(f"{'ID':>6}  {'CREATED (UTC)':<20} {'SOURCE':<8} {'REASON':<20} DETAIL")
        for r in rows:
            replayed = " (replayed)" if r.replayed_at else ""
            if r.purged_at:
                replayed += " (payload purged)"
            print(f"{r.id:>6}  {_utc(r.created_at):<20} {r.source:<8} {r.reason:<20} {r.detail[:90]}{replayed}")
    finally:
        services.close()
    return 0


def _dl_show(args: argparse.Namespace, settings: Settings) -> int:
    services = _services(settings)
    try:
        letter = services.dead_letters.get(args.id)
        if letter is None:
            print(f"vigil: no dead letter {args.id}", file=sys.stderr)
            return 1
        summary = letter.summary()
        for key in ("created_at", "replayed_at"):
            summary[key] = _utc(summary[key]) if summary[key] else None
        print(json.dumps(summary, indent=2))
        if letter.purged_at:
            print("payload: erased by retention (VIGIL_RETENTION_DEAD_LETTER_DAYS); the record stays")
        else:
            print("payload:")
            print(letter.payload.decode("utf-8", errors="replace")[:20000])
    finally:
        services.close()
    return 0


def _utc(epoch_s: float) -> str:
    """An epoch timestamp as an ISO 8601 UTC instant to the second, as people read it."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _replay_queue(topic: str) -> str:
    """The bus queue a dead letter goes back to: bus dead letters name their queue; handlers name
    their input (FHIR events, or an event hub of device messages)."""
    if ":" in topic:
        return topic
    return "eg:on_fhir_event" if topic == "fhir-events" else "eh:" + topic


def _dl_replay(args: argparse.Namespace, settings: Settings) -> int:
    from runtime.host import HostAlreadyRunning, LocalHost

    settings.require_contact_phone()
    services = _services(settings)
    host = LocalHost(services)
    try:
        letters = [services.dead_letters.get(i) for i in args.ids] if args.ids else services.dead_letters.list()
        letters = [x for x in letters if x is not None and x.replayed_at is None]
        if args.reason:
            letters = [x for x in letters if x.reason == args.reason]
        purged = [x for x in letters if x.purged_at]
        if purged:
            print(f"skipping {len(purged)} dead letters whose payload retention erased: nothing to replay")
            letters = [x for x in letters if not x.purged_at]
        last_letter = services.dead_letters.last_id()
        queues = set()
        for letter in letters:
            queue = _replay_queue(letter.topic)
            queues.add(queue)
            host.bus.publish(queue, letter.payload)
            services.dead_letters.mark_replayed(letter.id)
        print(f"replaying {len(letters)} dead letters")
        try:
            host.acquire()
        except HostAlreadyRunning:
            print("the running Vigil host will process them")
            return 0
        with bar(len(letters), "dead letters", force=args.progress) as progress:
            host.run_until_idle(on_progress=drain_progress(progress, lambda: sum(map(host.bus.pending, queues))))
        host.release()
        again = services.dead_letters.count(after_id=last_letter)
        still = services.dead_letters.count()
        print(f"done; {again} failed again and were parked again; {still} dead letters remain unreplayed")
    finally:
        services.close()
    return EXIT_DEAD_LETTERED if letters and again else 0
