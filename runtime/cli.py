"""`vigil`: the one command users learn (DESIGN §8)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from datetime import date
from pathlib import Path

from runtime.settings import Settings, SettingsError


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
    return int(args.func(args, settings) or 0)


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
    serve.set_defaults(func=_serve)

    ingest = sub.add_parser("ingest", help="ingest device messages from a file (JSON Lines or a JSON array) or -")
    ingest.add_argument("file", help="path, or - for standard input")
    ingest.add_argument("--url", help="post to a running `vigil serve` (e.g. http://127.0.0.1:7071) instead")
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
    replay.set_defaults(func=_dl_replay)

    from console import cli as console_cli
    from runtime import cli_events, cli_rules, cli_templates

    console_cli.register(sub)
    cli_rules.register(sub)
    cli_templates.register(sub)
    cli_events.register(sub)
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
    services = bootstrap(settings, clock=FixedClock(as_of))
    try:
        result = run_demo(services, patients=args.patients, days=args.days, start=args.start, seed=args.seed)
    except HostAlreadyRunning as exc:
        print(f"vigil: {exc}; stop it or use another --data-dir", file=sys.stderr)
        return 1
    finally:
        services.close()
    return 0 if result["drained"] else 1


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from runtime.bootstrap import local_token
    from runtime.host import HostAlreadyRunning, LocalHost
    from runtime.http_server import make_server, server_limits

    services = _services(settings)
    host = LocalHost(services)
    try:
        host.acquire()
    except HostAlreadyRunning as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return 1
    token = local_token(settings)
    address = (args.host or settings.http_host, args.port if args.port is not None else settings.http_port)
    try:
        server = make_server(host, token, address, server_limits(settings))
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
    try:
        host.serve_forever(stop)
    finally:
        server.shutdown()
        host.release()
        services.close()
    return 0


def _read_messages(path: str) -> list[bytes]:
    from triggers.http_api import split_messages

    data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    return split_messages(data)


def _ingest(args: argparse.Namespace, settings: Settings) -> int:
    try:
        messages = _read_messages(args.file)
    except OSError as exc:
        print(f"vigil: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    if args.url:
        return _ingest_http(args.url, messages, settings)
    from runtime.host import HostAlreadyRunning, LocalHost

    services = _services(settings)
    host = LocalHost(services)
    before_dl = services.dead_letters.count()
    before_obs = services.store.search("Observation", {"_summary": "count"}).total or 0
    try:
        host.acquire()
    except HostAlreadyRunning:
        # A `vigil serve` owns this data dir: hand the messages to its bus and let it work.
        n = host.publish_device_messages(messages)
        print(f"queued {n} messages for the running Vigil host on {settings.data_dir}")
        services.close()
        return 0
    try:
        host.publish_device_messages(messages)
        drained = host.run_until_idle()
        after_obs = services.store.search("Observation", {"_summary": "count"}).total or 0
        report = {
            "messages": len(messages),
            "new_observations": after_obs - before_obs,
            "dead_lettered": services.dead_letters.count() - before_dl,
            "drained": drained,
        }
        print(json.dumps(report, indent=2))
        return 0 if drained else 1
    finally:
        host.release()
        services.close()


def _ingest_http(url: str, messages: list[bytes], settings: Settings) -> int:
    import httpx

    from runtime.bootstrap import local_token

    token = local_token(settings)
    totals: dict[str, int] = {}
    with httpx.Client(timeout=120) as client:
        for i in range(0, len(messages), 500):
            chunk = b"\n".join(messages[i : i + 500])
            resp = client.post(url.rstrip("/") + "/api/ingest", content=chunk,
                               headers={"Authorization": f"Bearer {token}"})
            if resp.status_code not in (200, 207):
                print(f"vigil: server answered {resp.status_code}: {resp.text[:200]}", file=sys.stderr)
                return 1
            for k, v in resp.json().items():
                if isinstance(v, int):
                    totals[k] = totals.get(k, 0) + v
    print(json.dumps(totals, indent=2))
    return 0


def _dl_list(args: argparse.Namespace, settings: Settings) -> int:
    services = _services(settings)
    try:
        rows = services.dead_letters.list(include_replayed=args.all)
        if args.reason:
            rows = [r for r in rows if r.reason == args.reason]
        if not rows:
            print("no dead letters")
        for r in rows:
            replayed = " (replayed)" if r.replayed_at else ""
            print(f"{r.id:>6}  {r.source:<8} {r.reason:<20} {r.detail[:90]}{replayed}")
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
        print(json.dumps(letter.summary(), indent=2))
        print("payload:")
        print(letter.payload.decode("utf-8", errors="replace")[:20000])
    finally:
        services.close()
    return 0


def _replay_queue(topic: str) -> str:
    """The bus queue a dead letter goes back to: bus dead letters name their queue; handlers name
    their input (FHIR events, or an event hub of device messages)."""
    if ":" in topic:
        return topic
    return "eg:on_fhir_event" if topic == "fhir-events" else "eh:" + topic


def _dl_replay(args: argparse.Namespace, settings: Settings) -> int:
    from runtime.host import HostAlreadyRunning, LocalHost

    services = _services(settings)
    host = LocalHost(services)
    try:
        letters = [services.dead_letters.get(i) for i in args.ids] if args.ids else services.dead_letters.list()
        letters = [x for x in letters if x is not None and x.replayed_at is None]
        if args.reason:
            letters = [x for x in letters if x.reason == args.reason]
        for letter in letters:
            queue = _replay_queue(letter.topic)
            host.bus.publish(queue, letter.payload)
            services.dead_letters.mark_replayed(letter.id)
        print(f"replaying {len(letters)} dead letters")
        try:
            host.acquire()
        except HostAlreadyRunning:
            print("the running Vigil host will process them")
            return 0
        host.run_until_idle()
        host.release()
        still = services.dead_letters.count()
        print(f"done; {still} dead letters remain unreplayed (a message that fails again is parked again)")
    finally:
        services.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
