"""The bench's workload: the demo's mix of readings over many patients, their enrollment, and
their history, written before the clock starts through the ingest handler in large batches."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

from fhirstore.port import EventOutbox
from handlers.in_process import ingest_and_evaluate
from handlers.ingest import RawMessage, handle_device_messages
from runtime.bootstrap import Services, in_process, ingest_deps
from runtime.cohort import careplan, device
from runtime.host import LocalHost


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")  # JSON output writes it as null
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


# The workload follows the history and ends about an hour before now: readings from the future are
# refused, and a workload ending days ago would have every patient's absence rule fire on the
# first alert sweep, a burst of one message per patient that a running system does not see.
WORKLOAD_DAYS = 5
WORKLOAD_START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=WORKLOAD_DAYS, hours=1)


def messages(n: int, patients: int, seed: int = 1) -> list[bytes]:
    """The demo's mix, round robin over the patients, each kind in turn; at most WORKLOAD_DAYS long."""
    rng = random.Random(seed)
    step = min(60.0, WORKLOAD_DAYS * 86400 / max(n, 1))
    out = []
    for i in range(n):
        p = f"bench-{i % patients:04d}"
        when = (WORKLOAD_START + timedelta(seconds=step * i)).isoformat()
        kind = (i // patients + i) % 4
        if kind == 0:
            sys_ = 185 if rng.random() < 0.01 else round(rng.gauss(132, 10))
            m = {"type": "blood_pressure", "values": {"systolic": sys_, "diastolic": 80}}
        elif kind == 1:
            m = {"type": "heart_rate", "values": {"bpm": round(rng.gauss(74, 6))}}
        elif kind == 2:
            m = {"type": "spo2", "values": {"percent": 90 if rng.random() < 0.01 else 97}}
        else:
            m = {"type": "body_weight", "values": {"weight": round(rng.gauss(80, 0.4), 1)}}
        out.append(json.dumps({"deviceId": f"{p}-dev", "patientId": p, "time": when, **m}).encode())
    return out


def enroll(services: Services, patients: int) -> None:
    for i in range(patients):
        pid = f"bench-{i:04d}"
        services.store.update({"resourceType": "Patient", "id": pid, "active": True,
                               "telecom": [{"system": "sms", "value": f"+1555010{i:04d}"}]})
        services.store.update(device(f"{pid}-dev", pid))
        for program in ("hypertension", "copd", "heart-failure"):
            services.store.update(careplan(pid, program))


def observation(i: int) -> dict:
    return {"resourceType": "Observation", "id": f"obs-{i}", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/bench-{i % 50:04d}"},
            "effectiveDateTime": (datetime(2026, 10, 1, tzinfo=UTC) + timedelta(minutes=7 * i)).isoformat(),
            "valueQuantity": {"value": 60 + i % 40, "unit": "/min", "system": "http://unitsofmeasure.org",
                              "code": "/min"}}


def history_messages(patients: int, days: int, seed: int = 7) -> list[bytes]:
    """`days` of the demo's mix before the workload starts: one reading of each kind per patient
    per day, in range (history makes realistic windows; it is written before the clock starts)."""
    rng = random.Random(seed)
    out = []
    for day in range(days, 0, -1):
        for i in range(patients):
            p = f"bench-{i:04d}"
            when = WORKLOAD_START - timedelta(days=day) + timedelta(minutes=i % 600)
            for kind, (mtype, values) in enumerate((
                    ("blood_pressure", {"systolic": round(rng.gauss(128, 6)), "diastolic": 80}),
                    ("heart_rate", {"bpm": round(rng.gauss(74, 4))}),
                    ("spo2", {"percent": 97}),
                    ("body_weight", {"weight": round(rng.gauss(80, 0.3), 1)}))):
                out.append(json.dumps({"deviceId": f"{p}-dev", "patientId": p, "type": mtype,
                                       "time": (when + timedelta(hours=2 * kind)).isoformat(),
                                       "values": values}).encode())
    return out


def drain_outbox(outbox: EventOutbox) -> None:
    """History is written before the clock starts: its events are not part of the workload."""
    while rows := outbox.outbox_pending(5000):
        outbox.outbox_done([seq for seq, _ in rows])


def write_history(services: Services, patients: int, days: int, *, batch: int = 1000) -> int:
    """`days` of history for every patient, through the ingest handler (the store's own write path,
    so every index it keeps is written) in transactions of `batch` readings, evaluating only the
    last day: the history is there before the workload starts. Returns how many readings were written."""
    deps = ingest_deps(services)
    history = history_messages(patients, days)
    # The last day is evaluated (in process, as the host does), so the episodes the history implies
    # are open when the clock starts, as in a running system: without it the workload's first
    # reading of every patient whose history is above goal would open an episode.
    last_day = len(history) - 4 * patients if days > 1 else len(history)
    for i in range(0, last_day, batch):
        handle_device_messages([RawMessage(body=m) for m in history[i:min(i + batch, last_day)]], deps)
    assert services.outbox is not None  # the embedded store
    drain_outbox(services.outbox)
    here = in_process(services)
    for i in range(last_day, len(history), batch):
        ingest_and_evaluate([RawMessage(body=m) for m in history[i:i + batch]], deps, here)
    drain_outbox(services.outbox)
    return len(history)


def hold_timers(host: LocalHost) -> None:
    """Keep the host's timers from running during the measured phases. A sweep goes over every
    patient (alerts, escalations, reminders) whatever the readings: one that falls due inside a run,
    as depends on the wall clock and the run's length, would count as the readings' cost."""
    for spec in host.of_kind("timerTrigger"):
        spec.next_run = float("inf")
