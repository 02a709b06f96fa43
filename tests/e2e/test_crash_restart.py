"""SIGKILL the local host in the middle of a stream, restart it, and check that every accepted
message is stored exactly once, every alert opened once, and no message recorded twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from fhirstore.paging import search_all
from fhirstore.sqlite import SqliteFhirStore
from runtime.bus import LocalBus
from runtime.cohort import careplan, device

ROOT = Path(__file__).resolve().parents[2]
N_PATIENTS = 20
N_DAYS = 25


CRISIS_DAYS = (4, 14, 24)  # 10 days apart: no week holds two, so the weekly mean stays below goal


def _stream() -> tuple[list[bytes], int]:
    """Four readings per patient-day. Even-numbered patients have crisis blood pressure on three
    days spread through the stream: one alert episode each (the later crises update it)."""
    msgs = []
    for day in range(N_DAYS):
        for p in range(N_PATIENTS):
            t = f"2026-10-{day + 1:02d}T12:{p:02d}:00+00:00"
            crisis = p % 2 == 0 and day in CRISIS_DAYS
            base = {"deviceId": f"k-{p}", "patientId": f"k{p}", "time": t}
            msgs.append(json.dumps({**base, "type": "blood_pressure",
                                    "values": {"systolic": 188 if crisis else 112, "diastolic": 72}}).encode())
            msgs.append(json.dumps({**base, "type": "heart_rate", "values": {"bpm": 70 + p}}).encode())
            msgs.append(json.dumps({**base, "type": "spo2", "values": {"percent": 97}}).encode())
            msgs.append(json.dumps({**base, "type": "body_weight", "values": {"weight": 80 + p / 10}}).encode())
    return msgs, N_PATIENTS // 2


def _serve(data_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "VIGIL_DATA_DIR": str(data_dir), "VIGIL_HTTP_PORT": "0"}
    return subprocess.Popen([sys.executable, "-m", "runtime.cli", "serve"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _in_flight(bus: LocalBus) -> int:
    """Messages still to process (workflow events for other systems stay on their topic)."""
    return sum(n for topic, n in bus.topics().items() if topic.startswith(("eh:", "eg:")))


def _observations(store: SqliteFhirStore) -> int:
    return store.search("Observation", {"_summary": "count"}).total or 0


@pytest.mark.slow
def test_sigkill_mid_stream_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    store = SqliteFhirStore(data_dir / "fhir.db")
    for p in range(N_PATIENTS):
        store.update({"resourceType": "Patient", "id": f"k{p}", "active": True,
                      "telecom": [{"system": "sms", "value": f"+155501000{p:02d}"}]})
        store.update(careplan(f"k{p}", "hypertension"))
        store.update(device(f"k-{p}", f"k{p}"))
    msgs, expected_alerts = _stream()
    bus = LocalBus(data_dir / "bus.db")
    bus.publish_many("eh:device-messages", ((m, None, None, None) for m in msgs))

    first = _serve(data_dir)
    try:
        deadline = time.monotonic() + 60
        while _observations(store) < len(msgs) // 3:
            assert first.poll() is None, first.stdout.read().decode() if first.stdout else ""
            assert time.monotonic() < deadline, "host made no progress"
            time.sleep(0.02)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    at_kill = _observations(store)
    assert at_kill < len(msgs), "the stream finished before the kill; make it longer"

    second = _serve(data_dir)
    try:
        deadline = time.monotonic() + 120
        while True:
            done = (_observations(store) == len(msgs) and _in_flight(bus) == 0 and store.outbox_size() == 0)
            if done:
                break
            assert second.poll() is None, second.stdout.read().decode() if second.stdout else ""
            assert time.monotonic() < deadline, (
                f"not drained: {_observations(store)} observations, {_in_flight(bus)} on the bus")
            time.sleep(0.1)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)

    observations = search_all(store, "Observation", {"_count": "1000"})
    assert len(observations) == len(msgs)
    # Stored exactly once: no Observation was written twice (a replay is a no-op, not a version).
    assert Counter(o["meta"]["versionId"] for o in observations) == {"1": len(msgs)}
    issues = search_all(store, "DetectedIssue", {"_count": "1000"})
    assert len(issues) == expected_alerts
    assert {i["code"]["coding"][0]["code"] for i in issues} == {"htn-crisis"}
    assert sorted(i["patient"]["reference"] for i in issues) == sorted(
        f"Patient/k{p}" for p in range(0, N_PATIENTS, 2))
    # Every crisis reading was counted once in its patient's episode, none twice.
    for issue in issues:
        assert len(issue["implicated"]) == len(CRISIS_DAYS)
    tasks = search_all(store, "Task", {"_count": "1000"})
    assert len(tasks) == expected_alerts
    comms = search_all(store, "Communication", {"_count": "1000"})
    assert len(comms) == 2 * expected_alerts
    assert {c["status"] for c in comms} == {"completed"}
    outbox = [json.loads(p.read_text()) for p in (data_dir / "outbox").glob("*.json")]
    assert len(outbox) == 2 * expected_alerts
    assert len({m["message_id"] for m in outbox}) == len(outbox)
    assert _in_flight(LocalBus(data_dir / "bus.db")) == 0
    from ingest.deadletter import SqliteDeadLetterStore

    assert SqliteDeadLetterStore(data_dir / "deadletters.db").count() == 0
