"""Notification benchmark: messages/s through dispatch + the ACS SMS channel, and escalation sweep time.

    .venv/bin/python -m bench.notify [--messages 500] [--workers 4] [--tasks 10000]

1. Messages: each one is a real `deliver()`: a `Communication` recorded in the embedded SQLite FHIR
   store, the opt-out record read, the message id claimed in the SQLite send ledger, sent with the
   real `azure-communication-sms` SDK over HTTPS to the local ACS stand-in (which checks the HMAC
   signature and the body), then the ledger and the Communication completed. A second pass replays
   every message (all "already-sent", nothing reaches the server).
2. Escalation: `sweep()` of the pure state machine over 10,000 open Task dicts in mixed states
   (not started, waiting, overdue at levels 1-3, acknowledged) — the decision work of one timer
   sweep, without the store reads and writes the persisted sweep adds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.clock import SystemClock  # noqa: E402
from fhirstore.sqlite_store import SqliteFhirStore  # noqa: E402
from notifications.channels.acs_sms import AcsSmsChannel  # noqa: E402
from notifications.channels.ledger import SqliteSendLedger  # noqa: E402
from notifications.connection import parse_acs_connection_string  # noqa: E402
from notifications.consent import SmsConsentRegistry  # noqa: E402
from notifications.dispatch import MessageRequest, deliver  # noqa: E402
from notifications.escalation import acknowledge, advance, load_chains, sweep  # noqa: E402
from notifications.templates import TemplateLibrary  # noqa: E402
from tests.support.acs_server import FakeAcsServer  # noqa: E402

CHAINS = """
chains:
  crisis:
    levels:
      - {notify: [nurse], channels: [sms, email], wait: 15m}
      - {notify: [physician], channels: [sms], wait: 15m}
      - {notify: [on-call], channels: [sms, email], wait: 30m}
    on_exhausted: {action: repeat-last, times: 2, notify: [care-manager]}
"""


def bench_messages(count: int, workers: int) -> None:
    clock = SystemClock()
    lib = TemplateLibrary()
    body = lib.render("alert_moderate", "sms", "en", {"org_name": "Acme Clinic", "contact_phone": "555-0100"}).body
    with FakeAcsServer() as acs, tempfile.TemporaryDirectory() as tmp:
        store = SqliteFhirStore(Path(tmp) / "fhir.db", clock=clock)
        ledger = SqliteSendLedger(Path(tmp) / "sends.db")
        channel = AcsSmsChannel(parse_acs_connection_string(acs.connection_string), "+18005550100", ledger=ledger,
                                opt_outs=SmsConsentRegistry(store, clock), clock=clock, connection_verify=acs.ca_path)
        channels = {"sms": channel}
        requests = [MessageRequest(key=f"bench|{i}", channel="sms", to=f"+1555{5550000 + i:07d}", body=body,
                                   patient_ref=f"Patient/p{i}") for i in range(count)]
        deliver(store, channels, MessageRequest(key="warm-up", channel="sms", to="+15555559999", body=body), clock)

        def one(req: MessageRequest) -> float:
            t0 = time.perf_counter()
            outcome = deliver(store, channels, req, clock)
            assert outcome.status in ("sent", "already-sent"), outcome
            return time.perf_counter() - t0

        for label, pool_size in (("1 worker", 1), (f"{workers} workers", workers)):
            batch = [MessageRequest(**{**r.__dict__, "key": f"{r.key}|{label}"}) for r in requests]
            start = time.perf_counter()
            with ThreadPoolExecutor(pool_size) as pool:
                latencies = list(pool.map(one, batch))
            elapsed = time.perf_counter() - start
            latencies.sort()
            print(f"deliver -> ACS SMS ({label}): {count} messages in {elapsed:.2f} s = {count / elapsed:.0f} msg/s; "
                  f"latency p50 {statistics.median(latencies) * 1000:.1f} ms, "
                  f"p95 {latencies[int(0.95 * len(latencies)) - 1] * 1000:.1f} ms")
            before = len(acs.sms_messages)
            start = time.perf_counter()
            with ThreadPoolExecutor(pool_size) as pool:
                list(pool.map(one, batch))
            elapsed = time.perf_counter() - start
            assert len(acs.sms_messages) == before, "a replay must send nothing"
            print(f"  replay of the same {count}: {count / elapsed:.0f} msg/s, 0 sent again")
        unique = {(m['to'], m['message']) for m in acs.sms_messages}
        assert len(unique) == count + 1, "each (recipient, message) once"
        ledger.close()
        store.close()


def bench_sweep(n: int) -> None:
    chain = load_chains(CHAINS)["crisis"]
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    tasks = []
    for i in range(n):
        task = {"resourceType": "Task", "id": f"t{i}", "status": "requested", "intent": "order",
                "focus": {"reference": f"DetectedIssue/d{i}"}, "for": {"reference": f"Patient/p{i % 2000}"}}
        kind = i % 6
        if kind >= 1:  # started at a spread of times: some waiting, some overdue, at levels 1-3
            started = now - timedelta(minutes=(i * 7) % 90)
            step = advance(task, chain, started)
            task = step.task
            for _ in range(kind - 1):
                due = step.due or started
                step = advance(task, chain, min(now, due))
                task = step.task
        if kind == 5 and i % 12 == 5:
            task = acknowledge(task, "Practitioner/n1", now - timedelta(minutes=1)).task
        tasks.append(task)
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        steps = sweep(tasks, {"crisis": chain}, now)
        runs.append(time.perf_counter() - start)
    actions: dict[str, int] = {}
    for s in steps:
        actions[s.action] = actions.get(s.action, 0) + 1
    best, median = min(runs), statistics.median(runs)
    print(f"escalation sweep over {n} open Tasks: {median * 1000:.0f} ms median, {best * 1000:.0f} ms best "
          f"({n / median:,.0f} tasks/s); {len(steps)} need action now {actions}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=10_000)
    args = parser.parse_args()
    bench_messages(args.messages, args.workers)
    bench_sweep(args.tasks)


if __name__ == "__main__":
    main()
