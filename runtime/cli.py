"""`vigil`: the one command users learn (DESIGN §8)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from dataclasses import replace
from datetime import date
from pathlib import Path

from common.clock import Clock, SystemClock
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
    serve.add_argument("--workers", type=int, default=None,
                       help="worker processes pumping the data dir (default VIGIL_WORKERS, 1: this process)")
    serve.set_defaults(func=_serve)

    from console import cli as console_cli
    from runtime import (
        cli_analytics,
        cli_backup,
        cli_dead_letters,
        cli_events,
        cli_ingest,
        cli_purge,
        cli_rules,
        cli_templates,
    )

    cli_ingest.register(sub)
    cli_dead_letters.register(sub)
    console_cli.register(sub)
    cli_rules.register(sub)
    cli_templates.register(sub)
    cli_events.register(sub)
    cli_purge.register(sub)
    cli_backup.register(sub)
    cli_analytics.register(sub)
    return p


# -- commands -----------------------------------------------------------------------------------
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
                       http_port=args.port if args.port is not None else settings.http_port,
                       workers=args.workers if args.workers is not None else settings.workers)
    settings.validate()
    if not settings.contact_phone.strip() and settings.path(DEMO_AS_OF).is_file():
        # `make demo` then `vigil serve`: the demo's fictional clinic has its phone, as `vigil demo` gave it.
        settings = replace(settings, contact_phone=DEMO_CLINIC_PHONE)
    settings.require_contact_phone()
    from common.clock import ResumedClock
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
    if isinstance(clock, ResumedClock):
        print(f"  clock:   resumed from the demo's as-of time ({clock.now():%Y-%m-%d %H:%M} UTC); "
              "--catch-up runs on the wall clock", flush=True)
    from runtime.checks import server_capability_warnings

    for warning in server_capability_warnings(services):
        print(f"  warning: {warning}", file=sys.stderr, flush=True)
    try:
        if settings.workers > 1:
            # This process keeps the lock and the HTTP server; the workers pump (runtime.supervisor).
            from runtime.supervisor import Supervisor

            supervisor = Supervisor(settings, settings.workers, clock=clock)
            supervisor.start()
            print(f"  workers: {settings.workers} processes, pids {supervisor.pids}", flush=True)
            supervisor.run(stop)
        else:
            host.serve_forever(stop)
    finally:
        server.shutdown()
        host.release()
        services.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
