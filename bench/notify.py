"""Notification benchmark: messages/s through dispatch + the ACS SMS channel, and escalation sweep time.

    .venv/bin/python bench/notify.py [--messages 500] [--workers 4] [--tasks 10000] [--setup direct|pipeline]
    .venv/bin/python bench/notify.py --quick          # small counts, a few seconds

1. Messages: each one is a real `deliver()`: a `Communication` recorded in the embedded SQLite FHIR
   store, the opt-out record read, the message id claimed in the SQLite send ledger, sent with the
   real `azure-communication-sms` SDK over HTTPS to the local ACS stand-in (which checks the HMAC
   signature and the body), then the ledger and the Communication completed. A second pass replays
   every message (all "already-sent", nothing reaches the server).
2. Escalation: the pure state machine (`escalation.is_due`, then `advance` on each due Task, as
   the sweep decides) over 10,000 open Task dicts in mixed states (not started, waiting, overdue at
   levels 1-3, acknowledged) — the decision work of one timer sweep, without the store reads and
   writes the persisted sweep adds.
3. Persisted escalation sweep: `handlers.sweeps.run_escalation_sweep` (what the `escalation_sweep`
   timer calls) with the services `runtime.bootstrap` builds on a temporary data directory: the
   embedded SQLite FHIR store, the file outbox as the SMS and email channels, the local bus for
   workflow events. The store holds 10,000 open alert episodes, one per patient: Patient (SMS),
   active hypertension CarePlan, CareTeam of four Practitioners with SMS and email, the crisis
   blood-pressure Observation, its DetectedIssue and its Task at escalation level 1 of the `crisis`
   chain (the physician is due 15 minutes later). Timed: the sweep when nothing is due (every
   minute's common case), when every Task is due to notify level 2 (one message per Task to the
   outbox), and once more right after (nothing may be sent twice).
   `--setup direct` (default) builds each episode with the real code minus its messages: the rules
   are evaluated on the stored Observation as the FHIR-event handler does, `open_episode` builds
   the DetectedIssue and Task, and the Task gets its acknowledgement code and is moved to level 1
   by `escalation.advance` as `start_escalation` does; resources are written in transaction
   bundles. `--setup pipeline` runs the FHIR-event handler itself on each Observation (it also
   texts each patient and nurse), several times slower to set up; it writes the same Tasks and
   DetectedIssues (tests/integration/test_bench_notify.py checks it).
   Also printed: reading and deciding every open Task, which is how the sweep found due Tasks
   before it searched by `escalation-due`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.notify_sweep import bench_persisted_sweep, print_persisted_sweep  # noqa: E402
from common.clock import SystemClock  # noqa: E402
from fhirstore.sqlite import SqliteFhirStore  # noqa: E402
from notifications.channels.acs_sms import AcsSmsProvider  # noqa: E402
from notifications.channels.ledger import SqliteSendLedger  # noqa: E402
from notifications.channels.pipeline import GuardedChannel  # noqa: E402
from notifications.connection import parse_acs_connection_string  # noqa: E402
from notifications.consent import SmsConsentRegistry  # noqa: E402
from notifications.dispatch import MessageRequest, deliver  # noqa: E402
from notifications.escalation import acknowledge, advance, is_due  # noqa: E402
from notifications.escalation_chains import load_chains  # noqa: E402
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


def bench_messages(count: int, workers: int, *, quiet: bool = False) -> dict[str, float]:
    """ACS SMS sends through the guarded pipeline, then their replay; printed unless `quiet`, and returned."""
    figures: dict[str, float] = {}
    clock = SystemClock()
    lib = TemplateLibrary()
    body = lib.render("alert_moderate", "sms", "en", {"org_name": "Acme Clinic", "contact_phone": "555-0100"}).body
    with FakeAcsServer() as acs, tempfile.TemporaryDirectory() as tmp:
        store = SqliteFhirStore(Path(tmp) / "fhir.db", clock=clock)
        ledger = SqliteSendLedger(Path(tmp) / "sends.db")
        provider = AcsSmsProvider(parse_acs_connection_string(acs.connection_string), "+18005550100",
                                  connection_verify=acs.ca_path)
        channel = GuardedChannel("sms", "sms", provider, ledger=ledger, opt_outs=SmsConsentRegistry(store, clock),
                                 clock=clock)
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
            key = f"sms_{pool_size}_threads"
            figures[f"{key}_msgs_per_s"] = round(count / elapsed)
            figures[f"{key}_p50_ms"] = round(statistics.median(latencies) * 1000, 1)
            figures[f"{key}_p95_ms"] = round(latencies[int(0.95 * len(latencies)) - 1] * 1000, 1)
            if not quiet:
                print(f"deliver -> ACS SMS ({label}): {count} messages in {elapsed:.2f} s = "
                      f"{count / elapsed:.0f} msg/s; latency p50 {figures[f'{key}_p50_ms']:.1f} ms, "
                      f"p95 {figures[f'{key}_p95_ms']:.1f} ms")
            before = len(acs.sms_messages)
            start = time.perf_counter()
            with ThreadPoolExecutor(pool_size) as pool:
                list(pool.map(one, batch))
            elapsed = time.perf_counter() - start
            assert len(acs.sms_messages) == before, "a replay must send nothing"
            figures[f"{key}_replay_msgs_per_s"] = round(count / elapsed)
            if not quiet:
                print(f"  replay of the same {count}: {count / elapsed:.0f} msg/s, 0 sent again")
        unique = {(m['to'], m['message']) for m in acs.sms_messages}
        assert len(unique) == count + 1, "each (recipient, message) once"
        ledger.close()
        store.close()
    return figures


def bench_sweep(n: int, *, quiet: bool = False) -> dict[str, float]:
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
        # What the escalation sweep decides per Task (handlers.sweeps), without the store.
        decided = (advance(task, chain, now) for task in tasks if is_due(task, now))
        steps = [step for step in decided if step.action in ("notify", "exhausted")]
        runs.append(time.perf_counter() - start)
    actions: dict[str, int] = {}
    for s in steps:
        actions[s.action] = actions.get(s.action, 0) + 1
    best, median = min(runs), statistics.median(runs)
    if not quiet:
        print(f"escalation sweep over {n} open Tasks: {median * 1000:.0f} ms median, {best * 1000:.0f} ms best "
              f"({n / median:,.0f} tasks/s); {len(steps)} need action now {actions}")
    return {"sweep_decide_median_ms": round(median * 1000, 1), "sweep_decide_tasks_per_s": round(n / median),
            "sweep_need_action": len(steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=10_000, help="open escalation Tasks (both sweep benches)")
    parser.add_argument("--setup", choices=("direct", "pipeline"), default="direct",
                        help="how the persisted sweep's episodes are written (see above)")
    parser.add_argument("--quick", action="store_true", help="50 messages and 300 Tasks: a smoke run")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.tasks = 50, 300
    figures = bench_messages(args.messages, args.workers, quiet=args.json)
    figures.update(bench_sweep(args.tasks, quiet=args.json))
    persisted = bench_persisted_sweep(args.tasks, args.setup)
    if args.json:
        figures.update({f"persisted_{k}": round(v, 4) if isinstance(v, float) else v
                        for k, v in dataclasses.asdict(persisted).items()})
        print(json.dumps(figures))
    else:
        print_persisted_sweep(persisted)


if __name__ == "__main__":
    main()
