"""`vigil`: the one command users learn (DESIGN §8)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

from common.clock import Clock, SystemClock
from runtime.cli_progress import bar, drain_progress
from runtime.settings import Settings, SettingsError

# The demo's fictional clinic (555-01xx numbers are reserved for fiction in North America).
DEMO_CLINIC_PHONE = "+1-555-010-0100"
DEMO_AS_OF = "demo-as-of"  # in the data directory: the instant a demo's data runs "as of"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if not args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env(data_dir=args.data_dir)
    except SettingsError as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return 2
    # Anything this process creates is private to its user (health data), whatever the caller's
    # umask; the stores also set 0600/0700 explicitly (common/storage.py). Restored on return for
    # callers that run `main` in-process.
    previous_umask = os.umask(0o077)
    try:
        return int(args.func(args, settings) or 0)
    except SettingsError as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`vigil ... | head`): stop quietly, as the Python docs advise
        # (https://docs.python.org/3/library/signal.html#note-on-sigpipe), with head's exit status.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as exc:
        from runtime.storage_faults import report_storage_fault

        code = report_storage_fault(exc, settings.data_dir, verbose=args.verbose)
        if code is None:
            raise
        return code
    finally:
        os.umask(previous_umask)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vigil", description="Vigil remote patient monitoring engine")
    p.add_argument("--data-dir", type=Path, default=None, help="state directory (default: $VIGIL_DATA_DIR or ./.vigil)")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run a synthetic cohort through the whole local pipeline")
    demo.add_argument("--patients", type=int, default=50)
    demo.add_argument("--days", type=int, default=14)
    demo.add_argument("--start", type=date.fromisoformat, default=date(2026, 11, 1), help="first day (YYYY-MM-DD)")
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(func=_demo)

    serve = sub.add_parser("serve", help="run the local host: bus, scheduler, HTTP endpoints, /fhir")
    serve.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="listen port (default 7071)")
    serve.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate: serve HTTPS (with --tls-key)")
    serve.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    serve.add_argument("--catch-up", action="store_true",
                       help="on a demo data directory, run on the wall clock and send everything that came "
                            "due since the demo's as-of time (default: resume from that time)")
    serve.set_defaults(func=_serve)

    ingest = sub.add_parser("ingest", help="ingest device messages from a file (JSON Lines or a JSON array) or -")
    ingest.add_argument("file", help="path, or - for standard input")
    ingest.add_argument("--url", help="post to a running `vigil serve` (e.g. http://127.0.0.1:7071) instead")
    ingest.add_argument("--progress", action="store_true", help="show the progress bar even without a terminal")
    ingest.set_defaults(func=_ingest)

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

    from console import cli as console_cli
    from runtime import cli_analytics, cli_backup, cli_events, cli_purge, cli_rules, cli_templates

    console_cli.register(sub)
    cli_rules.register(sub)
    cli_templates.register(sub)
    cli_events.register(sub)
    cli_purge.register(sub)
    cli_backup.register(sub)
    cli_analytics.register(sub)
    return p


# -- commands -----------------------------------------------------------------------------------
def _services(settings: Settings):  # noqa: ANN202
    from runtime.bootstrap import bootstrap

    return bootstrap(settings)


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, datetime, time, timedelta

    from common.clock import FixedClock
    from runtime.bootstrap import bootstrap
    from runtime.demo import run_demo
    from runtime.host import HostAlreadyRunning

    # The demo replays two past weeks: it runs "as of" the afternoon after the last day (US
    # daytime), so its output does not depend on the hour it is run at (quiet hours, cool-downs).
    as_of = datetime.combine(args.start + timedelta(days=args.days), time(18, 0), UTC)
    if not settings.contact_phone.strip():
        settings = replace(settings, contact_phone=DEMO_CLINIC_PHONE)
    services = bootstrap(settings, clock=FixedClock(as_of))
    try:
        result = run_demo(services, patients=args.patients, days=args.days, start=args.start, seed=args.seed)
    except HostAlreadyRunning as exc:
        print(f"vigil: {exc}; stop it or use another --data-dir", file=sys.stderr)
        return 1
    finally:
        services.close()
    settings.path(DEMO_AS_OF).write_text(as_of.isoformat() + "\n")
    return 0 if result["drained"] else 1


def serve_clock(settings: Settings, *, catch_up: bool) -> Clock:
    """The clock `vigil serve` runs on: the wall clock, except on a demo data directory, which
    resumes from the demo's as-of time unless `--catch-up` (its episodes are dated in the past, and
    on the wall clock every escalation, absence alert and reminder of the gap would go out at once)."""
    from common.clock import FixedClock, ResumedClock, parse_instant

    if settings.as_of:  # VIGIL_AS_OF: a fixed clock, for simulations and the chaos bench
        return FixedClock(parse_instant(settings.as_of))
    marker = settings.path(DEMO_AS_OF)
    if catch_up or not marker.is_file():
        return SystemClock()
    return ResumedClock(parse_instant(marker.read_text().strip()))


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    # Acknowledgement links follow the address served on unless VIGIL_PUBLIC_BASE_URL says otherwise.
    settings = replace(settings, http_host=args.host or settings.http_host,
                       http_port=args.port if args.port is not None else settings.http_port)
    if not settings.contact_phone.strip() and settings.path(DEMO_AS_OF).is_file():
        # `make demo` then `vigil serve`: the demo's fictional clinic has its phone, as `vigil demo` gave it.
        settings = replace(settings, contact_phone=DEMO_CLINIC_PHONE)
    settings.require_contact_phone()
    from runtime.bootstrap import bootstrap, local_token
    from runtime.host import HostAlreadyRunning, LocalHost
    from runtime.http_server import Tls, make_server, server_limits

    if (args.tls_cert is None) != (args.tls_key is None):
        print("vigil: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    for pem in (args.tls_cert, args.tls_key):
        if pem is not None and not pem.is_file():
            print(f"vigil: no TLS file {pem}", file=sys.stderr)
            return 2
    tls = Tls(str(args.tls_cert), str(args.tls_key)) if args.tls_cert else None
    if tls is not None and not settings.public_base_url:
        settings = replace(settings, public_base_url=f"https://{settings.ack_base_url.split('://', 1)[1]}")

    clock = serve_clock(settings, catch_up=args.catch_up)
    services = bootstrap(settings, clock=clock)
    host = LocalHost(services)
    try:
        host.acquire()
    except HostAlreadyRunning as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return 1
    token = local_token(settings)
    address = (args.host or settings.http_host, args.port if args.port is not None else settings.http_port)
    try:
        server = make_server(host, token, address, server_limits(settings), tls)
    except OSError as exc:
        print(f"vigil: cannot listen on {address[0]}:{address[1]}: {exc.strerror or exc}", file=sys.stderr)
        host.release()
        services.close()
        return 1
    stop = threading.Event()

    def _stop(*_: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.start()
    bound = server.url
    print(f"Vigil local host on {bound}  (data: {settings.data_dir})", flush=True)
    print(f"  FHIR:    {bound}/fhir   functions: {bound}/api/<route>", flush=True)
    print(f"  console: {bound}/console   (accounts: vigil staff add USER --role ROLE)", flush=True)
    print(f"  token:   in {settings.path('local-token')} (send as 'Authorization: Bearer <token>')", flush=True)
    print("  functions: " + ", ".join(f"{s.name} ({s.trigger})" for s in host.functions), flush=True)
    if type(clock).__name__ == "ResumedClock":
        print(f"  clock:   resumed from the demo's as-of time ({clock.now():%Y-%m-%d %H:%M} UTC); "
              "--catch-up runs on the wall clock", flush=True)
    from runtime.checks import server_capability_warnings

    for warning in server_capability_warnings(services):
        print(f"  warning: {warning}", file=sys.stderr, flush=True)
    try:
        host.serve_forever(stop)
    finally:
        server.shutdown()
        host.release()
        services.close()
    return 0


def _read_messages(path: str) -> list[bytes]:
    from ingest.batches import split_messages

    data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    # An empty file holds no message (an empty HTTP body is one invalid message: someone sent it).
    return split_messages(data) if data.strip() else []


def _ingest(args: argparse.Namespace, settings: Settings) -> int:
    try:
        messages = _read_messages(args.file)
    except OSError as exc:
        print(f"vigil: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    if args.url:
        return _ingest_http(args.url, messages, settings, show=args.progress)
    settings.require_contact_phone()
    from handlers.ingest import IngestReport, reports_to
    from runtime.host import HostAlreadyRunning, LocalHost

    services = _services(settings)
    host = LocalHost(services)
    before_obs = services.store.search("Observation", {"_summary": "count"}).total or 0
    try:
        host.acquire()
    except HostAlreadyRunning:
        # A `vigil serve` owns this data dir: hand the messages to its bus and let it work.
        n = host.publish_device_messages(messages)
        print(f"queued {n} messages for the running Vigil host on {settings.data_dir}")
        services.close()
        return 0
    total = IngestReport()
    try:
        # Count what the handler decided for each message, batch by batch, as the host runs them;
        # a message the bus itself gave up on (every delivery raised) is a dead letter of the bus.
        last_letter = services.dead_letters.last_id()
        host.publish_device_messages(messages)
        progress = bar(len(messages), "messages", force=args.progress)
        with reports_to(total.add), progress:
            drained = host.run_until_idle(
                on_progress=drain_progress(progress, lambda: host.bus.pending(host.device_queue))
            )
        gave_up = services.dead_letters.count(after_id=last_letter, source="bus", topic=host.device_queue)
        after_obs = services.store.search("Observation", {"_summary": "count"}).total or 0
        report = ingest_summary(total, len(messages), bus_dead_letters=gave_up)
        report["new_observations"] = after_obs - before_obs
        report["drained"] = drained
        print(json.dumps(report, indent=2))
        return ingest_exit_code(report)
    finally:
        host.release()
        services.close()


def ingest_summary(total: Any, received: int, *, bus_dead_letters: int = 0) -> dict[str, Any]:
    """`vigil ingest`'s figures: every message's outcome (they add up to `received`), the reasons,
    and the Observation counts apart; the same keys in-process and with --url."""
    reasons = dict(total.reasons)
    if bus_dead_letters:
        reasons["delivery_failed"] = reasons.get("delivery_failed", 0) + bus_dead_letters
    dead = total.dead_lettered + bus_dead_letters
    return {
        "received": received, "written": total.written, "superseded": total.superseded, "dead_lettered": dead,
        "unaccounted": received - total.written - total.superseded - dead, "reasons": reasons,
        "observations": {"created": total.created, "updated": total.updated, "unchanged": total.unchanged},
    }


def _ingest_http(url: str, messages: list[bytes], settings: Settings, *, show: bool = False) -> int:
    import httpx

    from handlers.ingest import IngestReport
    from runtime.bootstrap import local_token

    token = local_token(settings)
    total = IngestReport()
    with httpx.Client(timeout=120) as client, bar(len(messages), "messages", force=show) as progress:
        for i in range(0, len(messages), 500):
            # Posted as JSON Lines: a pretty-printed array element is put on one line (a line break
            # outside a JSON string is whitespace; inside one it is invalid JSON either way).
            chunk = b"\n".join(m.replace(b"\r", b" ").replace(b"\n", b" ") for m in messages[i : i + 500])
            resp = client.post(url.rstrip("/") + "/api/ingest", content=chunk,
                               headers={"Authorization": f"Bearer {token}"})
            if resp.status_code not in (200, 207):
                print(f"vigil: server answered {resp.status_code}: {resp.text[:200]}", file=sys.stderr)
                return 1
            total.add(_report_from(resp.json()))
            progress.update(len(messages[i : i + 500]))
    report = ingest_summary(total, len(messages))
    # The same keys as in process: the server ran each chunk to the end before it answered.
    report["new_observations"] = total.created
    report["drained"] = True
    print(json.dumps(report, indent=2))
    return ingest_exit_code(report)


# `vigil ingest` exit status: 0 every message written (or superseded by one that was), 3 some were
# dead-lettered (see `vigil dead-letters list`), 1 the run did not finish or a message has no outcome.
EXIT_DEAD_LETTERED = 3


def ingest_exit_code(report: dict[str, Any]) -> int:
    if not report["drained"] or report["unaccounted"]:
        return 1
    return EXIT_DEAD_LETTERED if report["dead_lettered"] else 0


def _report_from(body: dict[str, Any]) -> Any:
    from handlers.ingest import IngestReport

    obs = body.get("observations") or {}
    report = IngestReport(received=int(body.get("received", 0)), written=int(body.get("written", 0)),
                          superseded=int(body.get("superseded", 0)), dead_lettered=int(body.get("dead_lettered", 0)),
                          created=int(obs.get("created", 0)), updated=int(obs.get("updated", 0)),
                          unchanged=int(obs.get("unchanged", 0)))
    report.reasons.update({str(k): int(v) for k, v in (body.get("reasons") or {}).items()})
    return report


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


if __name__ == "__main__":
    sys.exit(main())
