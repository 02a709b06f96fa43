"""`vigil ingest FILE|- [--url URL]`: device messages from a file (JSON Lines or a JSON array) through the
local pipeline, or posted to a running `vigil serve`, with every message's outcome counted
(docs/ingest-accounting.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from runtime.cli_progress import bar, drain_progress
from runtime.settings import Settings

# `vigil ingest` exit status: 0 every message written (or superseded by one that was), 3 some were
# dead-lettered (see `vigil dead-letters list`), 1 the run did not finish or a message has no outcome.
EXIT_DEAD_LETTERED = 3


def register(sub: argparse._SubParsersAction) -> None:
    ingest = sub.add_parser("ingest", help="ingest device messages from a file (JSON Lines or a JSON array) or -")
    ingest.add_argument("file", help="path, or - for standard input")
    ingest.add_argument("--url", help="post to a running `vigil serve` (e.g. http://127.0.0.1:7071) instead")
    ingest.add_argument("--progress", action="store_true", help="show the progress bar even without a terminal")
    ingest.set_defaults(func=_ingest)


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
    from runtime.bootstrap import bootstrap
    from runtime.host import HostAlreadyRunning, LocalHost

    services = bootstrap(settings)
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
