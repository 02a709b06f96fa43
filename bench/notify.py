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
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.clock import FixedClock, SystemClock  # noqa: E402
from fhirstore.paging import search_all  # noqa: E402
from fhirstore.port import FhirStore  # noqa: E402
from fhirstore.sqlite import SqliteFhirStore  # noqa: E402
from handlers.escalations import DEFAULT_CHAINS, derive_ack_code, escalation_chain_of, run_escalation_step  # noqa: E402
from handlers.fhir_events import EventDeps, evaluate_observation  # noqa: E402
from handlers.messaging import Messaging  # noqa: E402
from handlers.patient_data import history_window, load_patient_rules, load_readings  # noqa: E402
from handlers.sweeps import run_escalation_sweep  # noqa: E402
from notifications.ack_codes import with_ack_code  # noqa: E402
from notifications.channels.acs_sms import AcsSmsProvider  # noqa: E402
from notifications.channels.ledger import SqliteSendLedger  # noqa: E402
from notifications.channels.pipeline import GuardedChannel  # noqa: E402
from notifications.connection import parse_acs_connection_string  # noqa: E402
from notifications.consent import SmsConsentRegistry  # noqa: E402
from notifications.dispatch import MessageRequest, deliver  # noqa: E402
from notifications.escalation import acknowledge, advance, is_due  # noqa: E402
from notifications.escalation_chains import load_chains  # noqa: E402
from notifications.templates import TemplateLibrary  # noqa: E402
from rules.episode_resources import open_episode  # noqa: E402
from rules.evaluate import evaluate  # noqa: E402
from rules.readings import readings_from_observation  # noqa: E402
from rules.window import History  # noqa: E402
from runtime.bootstrap import (  # noqa: E402
    Services,
    bootstrap,
    messaging,  # noqa: E402
)
from runtime.cohort import careplan  # noqa: E402
from runtime.settings import Settings  # noqa: E402
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
        # What the escalation sweep decides per Task (handlers.sweeps), without the store.
        decided = (advance(task, chain, now) for task in tasks if is_due(task, now))
        steps = [step for step in decided if step.action in ("notify", "exhausted")]
        runs.append(time.perf_counter() - start)
    actions: dict[str, int] = {}
    for s in steps:
        actions[s.action] = actions.get(s.action, 0) + 1
    best, median = min(runs), statistics.median(runs)
    print(f"escalation sweep over {n} open Tasks: {median * 1000:.0f} ms median, {best * 1000:.0f} ms best "
          f"({n / median:,.0f} tasks/s); {len(steps)} need action now {actions}")


# -- the persisted escalation sweep ------------------------------------------------------------

T0 = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)  # daytime: patient texts are not held for quiet hours
ROLES = ("nurse", "physician", "on-call", "care-manager")
STAFF_PER_ROLE = 25
BUNDLE = 1000  # resources per transaction bundle while setting up


@dataclass(frozen=True)
class SweepFigures:
    tasks: int
    setup: str
    setup_s: float
    idle_s: float  # median sweep when nothing is due
    idle_examined: int
    full_scan_s: float  # reading and deciding every open Task (how the sweep found due Tasks before)
    due_s: float
    due_cpu_s: float  # this process's CPU time: what the wall time would be on an idle machine, roughly
    due_messages: int
    due_files: int  # files the outbox channel wrote during the due sweep
    again_s: float
    again_messages: int
    again_files: int
    peak_rss_mb: float
    rss_before_mb: float  # the process's peak before this part (the message benches ran first)


def bench_persisted_sweep(n: int, setup: str = "direct") -> SweepFigures:
    """Build `n` open escalation episodes in an embedded store and time the escalation sweep."""
    rss_before = _peak_rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        clock = FixedClock(T0)
        services = bootstrap(Settings.from_env({}, data_dir=Path(tmp)), clock=clock)
        try:
            m = messaging(services)
            start = time.perf_counter()
            write_episodes(services, m, n, setup)
            setup_s = time.perf_counter() - start
            outbox = services.settings.path("outbox")

            clock.set(T0 + timedelta(minutes=5))  # level 1 went out at T0, level 2 is due at T0 + 15 min
            idle = []
            for _ in range(5):
                t = time.perf_counter()
                report = run_escalation_sweep(m)
                idle.append(time.perf_counter() - t)
                assert report.messages_sent == 0 and report.failed == 0, report
            full_scan_s = _full_scan(m)

            clock.set(T0 + timedelta(minutes=16))
            files = _count_files(outbox)
            t, cpu = time.perf_counter(), time.process_time()
            due = run_escalation_sweep(m)
            due_s, due_cpu_s = time.perf_counter() - t, time.process_time() - cpu
            due_files = _count_files(outbox) - files
            assert due.failed == 0 and due.messages_sent == n, due  # one physician per care team

            files = _count_files(outbox)
            t = time.perf_counter()
            again = run_escalation_sweep(m)
            again_s = time.perf_counter() - t
            again_files = _count_files(outbox) - files
            assert again.messages_sent == 0 and again_files == 0, again
            return SweepFigures(n, setup, setup_s, statistics.median(idle), report.examined, full_scan_s, due_s,
                                due_cpu_s, due.messages_sent, due_files, again_s, again.messages_sent, again_files,
                                _peak_rss_mb(), rss_before)
        finally:
            services.close()


def print_persisted_sweep(f: SweepFigures) -> None:
    print(f"persisted escalation sweep, embedded SQLite store, {f.tasks} open Tasks "
          f"(setup '{f.setup}' took {f.setup_s:.1f} s):")
    print(f"  nothing due, {f.tasks} open Tasks: {f.idle_s * 1000:.1f} ms median of 5 "
          f"({f.idle_examined} Tasks read); reading every open Task instead: {f.full_scan_s * 1000:.0f} ms")
    print(f"  all due, {f.tasks} open Tasks advance to level 2: {f.due_s:.1f} s ({f.due_cpu_s:.1f} s CPU), "
          f"{f.due_messages} messages ({f.due_files} outbox files) = {f.due_messages / f.due_s:.0f} msg/s, "
          f"{f.due_s / f.tasks * 1000:.2f} ms per Task")
    print(f"  second sweep right after, {f.tasks} open Tasks: {f.again_s * 1000:.1f} ms, "
          f"{f.again_messages} messages, {f.again_files} new outbox files")
    print(f"  peak RSS of the bench process, {f.tasks} open Tasks: {f.peak_rss_mb:.0f} MB "
          f"({f.rss_before_mb:.0f} MB before this part)")


def write_episodes(services: Services, m: Messaging, n: int, setup: str) -> None:
    """Staff, then per patient: Patient, CarePlan, CareTeam, crisis Observation; then the episodes."""
    if setup not in ("direct", "pipeline"):
        raise ValueError(f"--setup must be direct or pipeline, not {setup!r}")
    store = services.store
    staff = [{"resourceType": "Practitioner", "id": f"bench-{role}-{k}", "active": True,
              "telecom": [{"system": "sms", "value": _phone(900 + r, k)},
                          {"system": "email", "value": f"{role}-{k}@clinic.example.org"}]}
             for r, role in enumerate(ROLES) for k in range(STAFF_PER_ROLE)]
    _put_all(store, staff)
    observations = []
    for chunk in _chunks(range(n), BUNDLE // 4):
        batch: list[dict[str, Any]] = []
        for i in chunk:
            pid = f"bench-p{i:06d}"
            obs = crisis_observation(i, pid)
            observations.append(obs)
            batch += [{"resourceType": "Patient", "id": pid, "active": True,
                       "telecom": [{"system": "sms", "value": _phone(201 + (i // 100) % 699, i % 100)}]},
                      careplan(pid, "hypertension"), care_team(i, pid), obs]
        _put_all(store, batch)
    if setup == "pipeline":
        deps = EventDeps(m, services.rulesets, services.dead_letters)
        for obs in observations:
            outcome = evaluate_observation(obs, deps)  # what on_fhir_event does after reading the version
            assert outcome.decisions.get("open") == 1, outcome
        return
    pending: list[dict[str, Any]] = []
    for obs in observations:
        pending += episode_resources(m, services, obs)
        if len(pending) >= BUNDLE:
            _put_all(store, pending)
            pending = []
    _put_all(store, pending)


def episode_resources(m: Messaging, services: Services, obs: dict[str, Any]) -> list[dict[str, Any]]:
    """The DetectedIssue and level-1 Task the FHIR-event handler would write for `obs`, built by the
    same code (`evaluate`, `open_episode`, `escalation.advance`) but without sending its messages."""
    patient_ref = obs["subject"]["reference"]
    now = m.clock.now()
    trigger = readings_from_observation(obs)
    enrolled = load_patient_rules(services.store, patient_ref, services.rulesets, now)
    assert enrolled is not None
    metrics, since = history_window(enrolled.rulesets, trigger[0].effective, frozenset(r.metric for r in trigger))
    history = History(load_readings(services.store, patient_ref, metrics, since))
    out = []
    for firing in evaluate(enrolled.rulesets, trigger, history, enrolled.context):
        episode = open_episode(firing, patient_ref, now)
        assert episode.task is not None, "the bench's rule must open a Task"
        chain = m.chains[firing.rule.actions.escalate or DEFAULT_CHAINS[firing.severity]]
        # start_escalation's first step: the acknowledgement code stored, then level 1 notified.
        task, _ = with_ack_code(episode.task, derive_ack_code(m, episode.task["id"]))
        step = advance(task, chain, now)
        out += [step.task, episode.detected_issue, *([episode.flag] if episode.flag else [])]
    return out


def crisis_observation(i: int, patient_id: str) -> dict[str, Any]:
    """A home blood pressure of 192/118 mmHg five minutes before T0 (hypertension `htn-crisis`)."""
    def component(code: str, value: int) -> dict[str, Any]:
        return {"code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "valueQuantity": {"value": value, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                                  "code": "mm[Hg]"}}

    return {"resourceType": "Observation", "id": f"bench-o{i:06d}", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "subject": {"reference": f"Patient/{patient_id}"},
            "effectiveDateTime": (T0 - timedelta(minutes=5)).isoformat().replace("+00:00", "Z"),
            "component": [component("8480-6", 192), component("8462-4", 118)]}


def care_team(i: int, patient_id: str) -> dict[str, Any]:
    return {"resourceType": "CareTeam", "id": f"{patient_id}-team", "status": "active",
            "subject": {"reference": f"Patient/{patient_id}"},
            "participant": [{"role": [{"coding": [{"code": role}]}],
                             "member": {"reference": f"Practitioner/bench-{role}-{i % STAFF_PER_ROLE}"}}
                            for role in ROLES]}


def _phone(area: int, line: int) -> str:
    """A fictional North American number (555-0100 to 555-0199 are reserved for fiction)."""
    return f"+1{area}555{100 + line % 100:04d}"


def _put_all(store: FhirStore, resources: list[dict[str, Any]]) -> None:
    for chunk in _chunks(resources, BUNDLE):
        store.transaction({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in chunk]})


def _chunks(items: Any, size: int) -> Iterator[list[Any]]:
    items = list(items)
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _count_files(directory: Path) -> int:
    return sum(1 for e in os.scandir(directory) if e.name.endswith(".json")) if directory.exists() else 0


def _full_scan(m: Messaging) -> float:
    """How the sweep found due Tasks before `escalation-due`: read every open Task, decide each."""
    start = time.perf_counter()
    for task in search_all(m.store, "Task", {"status": "requested", "_count": "1000"}):
        chain = escalation_chain_of(m, task)
        if chain is not None:
            assert run_escalation_step(m, task, chain) == 0
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=10_000, help="open escalation Tasks (both sweep benches)")
    parser.add_argument("--setup", choices=("direct", "pipeline"), default="direct",
                        help="how the persisted sweep's episodes are written (see above)")
    parser.add_argument("--quick", action="store_true", help="50 messages and 300 Tasks: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.tasks = 50, 300
    bench_messages(args.messages, args.workers)
    bench_sweep(args.tasks)
    print_persisted_sweep(bench_persisted_sweep(args.tasks, args.setup))


if __name__ == "__main__":
    main()
