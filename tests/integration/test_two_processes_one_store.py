"""Two processes on one embedded store (a real SQLite file) evaluating the same readings at the
same time — what a second worker, or an at-least-once re-delivery racing the first, does — open
each episode once and send each message once."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from common.clock import FixedClock
from fhirstore.errors import PreconditionFailed
from fhirstore.paging import search_all
from handlers.ingest import RawMessage, handle_device_messages
from runtime.bootstrap import bootstrap
from runtime.settings import Settings
from tests.support.pipeline import CLINIC_PHONE, DAYTIME, add_patient, reading

CRISIS = {"systolic": 190, "diastolic": 112}
PATIENTS = ("p1", "p2", "p3")


def services_on(data_dir: Path) -> Any:
    return bootstrap(Settings.from_env({}, data_dir=data_dir, contact_phone=CLINIC_PHONE), clock=FixedClock(DAYTIME))


def evaluate_all(data_dir: str, events: list[dict[str, Any]], start: Any, results: Any) -> None:
    """One worker: every event, in order, as the bus would deliver it (a conflict is retried).
    Reports the message ids its provider actually accepted (a duplicate file is not one)."""
    from handlers.fhir_events import handle_fhir_event
    from notifications.channels.outbox import OutboxProvider
    from runtime.bootstrap import event_deps

    handed: list[str] = []
    send = OutboxProvider.send

    def counted(self: OutboxProvider, message: Any) -> Any:
        result = send(self, message)
        if result.outcome == "accepted":
            handed.append(message.message_id)
        return result

    OutboxProvider.send = counted  # type: ignore[method-assign]
    services = services_on(Path(data_dir))
    deps = event_deps(services)
    start.wait()
    for event in events:
        for attempt in range(5):
            try:
                handle_fhir_event(event, deps)
                break
            except PreconditionFailed:  # the other worker wrote the episode first: read it again
                if attempt == 4:
                    raise
    services.close()
    results.put(handed)


def test_two_processes_evaluating_the_same_readings_open_one_episode_and_send_once(tmp_path: Path) -> None:
    services = services_on(tmp_path)
    for i, pid in enumerate(PATIENTS):
        add_patient(services, pid, phone=f"+1555010000{i}")
    from runtime.bootstrap import ingest_deps

    msgs = [RawMessage(body=reading(pid, "blood_pressure", (DAYTIME - timedelta(minutes=50 - 5 * k)).isoformat(),
                                    CRISIS)) for k in range(6) for pid in PATIENTS]
    assert handle_device_messages(msgs, ingest_deps(services)).written == len(msgs)
    events = [e for _, e in services.store.outbox_pending(1000)  # type: ignore[attr-defined]
              if e["data"]["resourceType"] == "Observation"]
    assert len(events) == len(msgs)

    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=evaluate_all, args=(str(tmp_path), events, start, results)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert [w.exitcode for w in workers] == [0, 0]
    handed = Counter(results.get(timeout=5) + results.get(timeout=5))

    issues = search_all(services.store, "DetectedIssue", {"_count": "1000"})
    by_episode = Counter((i["patient"]["reference"], i["code"]["coding"][0]["code"]) for i in issues)
    assert set(by_episode) == {(f"Patient/{p}", "htn-crisis") for p in PATIENTS}
    assert all(n == 1 for n in by_episode.values())  # one episode per patient and rule
    comms = search_all(services.store, "Communication", {"_count": "1000"})
    keys = Counter(c["identifier"][0]["value"] for c in comms)
    assert keys and all(n == 1 for n in keys.values())  # one record per message key
    # The outbox provider itself refuses a second file of one message id, so this holds by construction;
    # the checks above (one episode, one Communication per key) are what two racing workers could break.
    assert handed and all(n == 1 for n in handed.values())
    files = services.channels["outbox"].provider.messages()
    assert {f["message_id"] for f in files} == set(handed)
    assert len(handed) == sum(1 for c in comms if c["status"] == "completed")
    services.close()
