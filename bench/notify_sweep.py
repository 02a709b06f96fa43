"""The persisted escalation sweep of bench/notify.py: open episodes written in bulk into an
embedded store, then timed sweeps over them (nothing due, all due, again); `print_persisted_sweep` prints them."""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common.clock import FixedClock
from fhirstore.paging import search_all
from fhirstore.port import FhirStore
from handlers.escalations import DEFAULT_CHAINS, derive_ack_code, escalation_chain_of, run_escalation_step
from handlers.fhir_events import EventDeps, evaluate_observation
from handlers.messaging import Messaging
from handlers.patient_data import history_window, load_patient_rules, load_readings
from handlers.sweeps import run_escalation_sweep
from notifications.ack_codes import with_ack_code
from notifications.escalation import advance
from rules.episode_resources import open_episode
from rules.evaluate import evaluate
from rules.readings import readings_from_observation
from rules.window import History
from runtime.bootstrap import (
    Services,
    bootstrap,
    messaging,
)
from runtime.cohort import careplan
from runtime.settings import Settings

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
