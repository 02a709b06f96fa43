"""The escalation sweep (handlers.sweeps.run_escalation_sweep) on the embedded services: it reads
only the Tasks whose escalation is due, advances each once, and never misses a due one, even on a
store that indexed the Task before it knew the `escalation-due` parameter, or one that rejects it."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from common.clock import FixedClock, iso
from fhirstore.errors import InvalidSearch
from fhirstore.port import SearchParams, SearchResult
from handlers.acknowledge import record_acknowledgement
from handlers.escalations import escalation_chain_of, run_escalation_step, start_escalation
from handlers.messaging import Messaging
from handlers.sweeps import EscalationReport, escalation_candidates, run_escalation_sweep
from notifications.escalation import LEVEL_SYSTEM
from notifications.escalation_chains import load_chains
from runtime.bootstrap import Services, bootstrap, messaging
from runtime.settings import Settings
from tests.support.pipeline import DAYTIME

NURSE, DOCTOR = "+15550100201", "+15550100202"
# crisis as shipped, but exhausted after level 2 (shorter to walk through in a test).
CHAINS = load_chains("""
chains:
  crisis:
    levels:
      - {notify: [nurse], channels: [sms, email], wait: 15m}
      - {notify: [physician], channels: [sms, email], wait: 15m}
    on_exhausted: {action: stop}
""")


@pytest.fixture
def services(data_dir: Path) -> Iterator[Services]:
    s = bootstrap(Settings.from_env({}, data_dir=data_dir), clock=FixedClock(DAYTIME))
    s.store.update({"resourceType": "Practitioner", "id": "nurse-1",
                    "telecom": [{"system": "sms", "value": NURSE}, {"system": "email", "value": "n@example.org"}]})
    s.store.update({"resourceType": "Practitioner", "id": "doctor-1",
                    "telecom": [{"system": "sms", "value": DOCTOR}, {"system": "email", "value": "d@example.org"}]})
    yield s
    s.close()


@pytest.fixture
def m(services: Services) -> Messaging:
    return dataclasses.replace(messaging(services), chains=CHAINS)


def open_task(s: Services, m: Messaging, n: int, started: timedelta) -> str:
    """Patient n's alert Task (the shape `rules.episode_resources` writes), its chain started
    `started` before DAYTIME the way an opened episode starts it."""
    pid = f"p{n}"
    s.store.update({"resourceType": "Patient", "id": pid, "telecom": [{"system": "sms", "value": "+15550100001"}]})
    s.store.update({"resourceType": "CareTeam", "id": f"team-{pid}", "status": "active",
                    "subject": {"reference": f"Patient/{pid}"}, "participant": [
                        {"role": [{"coding": [{"code": "nurse"}]}], "member": {"reference": "Practitioner/nurse-1"}},
                        {"role": [{"coding": [{"code": "physician"}]}],
                         "member": {"reference": "Practitioner/doctor-1"}}]})
    m.clock.set(DAYTIME - started)
    task_id = f"alert-{n}"
    task = s.store.update({
        "resourceType": "Task", "id": task_id, "status": "requested", "intent": "order", "priority": "asap",
        "businessStatus": {"coding": [{"system": LEVEL_SYSTEM, "code": "0"}], "text": "not escalated"},
        "focus": {"reference": f"DetectedIssue/{task_id}"}, "for": {"reference": f"Patient/{pid}"},
        "authoredOn": iso(m.clock.now()), "lastModified": iso(m.clock.now())}).resource
    assert start_escalation(m, task, severity="high", chain_id=None) == 1  # the nurse, at once
    m.clock.set(DAYTIME)
    return task_id


def sweep(m: Messaging, after: timedelta = timedelta(0)) -> EscalationReport:
    m.clock.set(DAYTIME + after)
    return run_escalation_sweep(m)


def level(s: Services, task_id: str) -> str:
    return s.store.read("Task", task_id)["businessStatus"]["coding"][0]["code"]


def texts_to(s: Services, number: str) -> int:
    return sum(1 for p in s.settings.path("outbox").glob("*.json") if json.loads(p.read_text())["to"] == number)


def test_only_due_tasks_are_read_and_each_advances_once(services: Services, m: Messaging) -> None:
    s = services
    due = [open_task(s, m, 1, timedelta(minutes=20)), open_task(s, m, 2, timedelta(minutes=15))]  # 2: due now
    waiting = [open_task(s, m, n, timedelta(minutes=5)) for n in (3, 4, 5)]

    report = sweep(m)
    assert (report.examined, report.messages_sent, report.failed) == (2, 2, 0)
    assert [level(s, t) for t in due] == ["level-2", "level-2"]
    assert [level(s, t) for t in waiting] == ["level-1"] * 3
    assert texts_to(s, DOCTOR) == 2 and texts_to(s, NURSE) == 5

    # Right after: nothing is due, nothing is read, nothing is sent again.
    assert dataclasses.astuple(sweep(m)) == (0, 0, 0)
    # Ten minutes on, the three that were waiting are due; the first two wait for level 2's 15 minutes.
    report = sweep(m, timedelta(minutes=10))
    assert (report.examined, report.messages_sent) == (3, 3)
    assert texts_to(s, DOCTOR) == 5


def test_exhausted_and_acknowledged_tasks_are_not_read(services: Services, m: Messaging) -> None:
    s = services
    exhausted, acknowledged = open_task(s, m, 1, timedelta(minutes=40)), open_task(s, m, 2, timedelta(minutes=40))
    acked = s.store.read("Task", acknowledged)
    s.store.update({**acked, "status": "accepted", "owner": {"reference": "Practitioner/nurse-1"},
                    "businessStatus": {"coding": [{"system": LEVEL_SYSTEM, "code": "acknowledged"}]},
                    "extension": [e for e in acked["extension"] if e["url"] != "urn:vigil:escalation-due"]})
    assert sweep(m, timedelta(minutes=-20)).examined == 1  # level 2
    assert sweep(m).examined == 1 and level(s, exhausted) == "exhausted"
    for hours in (1, 2, 3):
        assert dataclasses.astuple(sweep(m, timedelta(hours=hours))) == (0, 0, 0)


def test_tasks_indexed_before_the_store_knew_the_parameter_still_escalate(services: Services, m: Messaging,
                                                                         data_dir: Path) -> None:
    s = services
    due, waiting = open_task(s, m, 1, timedelta(minutes=20)), open_task(s, m, 2, timedelta(minutes=5))
    # What a data directory written by an older Vigil holds: the Tasks, but no escalation-due rows.
    with sqlite3.connect(data_dir / "fhir.db") as db:
        removed = db.execute("DELETE FROM dt WHERE pid = (SELECT pid FROM params WHERE name = ?)",
                             ("Task.escalation-due",)).rowcount
    assert removed == 2

    report = sweep(m)
    assert (report.examined, report.messages_sent) == (2, 1)  # both read (no due time indexed), one due
    assert (level(s, due), level(s, waiting)) == ("level-2", "level-1")
    # Advancing re-indexed the first; the waiting one is read each minute until its own next step.
    assert sweep(m).examined == 1
    assert sweep(m, timedelta(minutes=10)).messages_sent == 1
    assert sweep(m, timedelta(minutes=11)).examined == 0


class NoCustomParams:
    """A FHIR server in strict mode that rejects Vigil's SearchParameter with a 400 although its
    CapabilityStatement lists it (say, registered but not reindexed yet)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def capabilities(self) -> dict[str, Any]:
        from fhirstore.rest import capability_statement

        return capability_statement("")

    def search(self, resource_type: str, params: SearchParams | None = None) -> SearchResult:
        if any(key.startswith("escalation-due") for key in params or {}):
            raise InvalidSearch(f"unknown search parameter for {resource_type}")
        return self.store.search(resource_type, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_a_store_that_rejects_the_parameter_gets_every_open_task_read(services: Services, m: Messaging,
                                                                      captured_logs) -> None:
    s = services
    due, waiting = open_task(s, m, 1, timedelta(minutes=20)), open_task(s, m, 2, timedelta(minutes=5))
    report = sweep(dataclasses.replace(m, store=NoCustomParams(s.store)))
    assert (report.examined, report.messages_sent) == (2, 1)
    assert (level(s, due), level(s, waiting)) == ("level-2", "level-1")
    assert "rejected the escalation-due search" in captured_logs.text


def test_a_sweep_working_from_its_snapshot_pages_nobody_for_an_alert_acknowledged_meanwhile(
        services: Services, m: Messaging) -> None:
    """The sweep found the Task due; the nurse acknowledged before the sweep reached it: the
    physician is not texted, and the acknowledgement stands."""
    s = services
    task_id = open_task(s, m, 1, timedelta(minutes=20))
    m.clock.set(DAYTIME)
    [snapshot] = escalation_candidates(s.store, m.clock.now())
    assert record_acknowledgement(m, task_id, "Practitioner/nurse-1").status == "acknowledged"
    assert run_escalation_step(m, snapshot, escalation_chain_of(m, snapshot)) == 0
    assert texts_to(s, DOCTOR) == 0
    assert s.store.read("Task", task_id)["status"] == "accepted"


def test_tasks_naming_a_chain_no_longer_configured_are_reported(services: Services, m: Messaging, caplog) -> None:
    task_id = open_task(services, m, 1, timedelta(minutes=20))
    caplog.set_level("WARNING", logger="handlers.sweeps")
    renamed = dataclasses.replace(m, chains={"renamed": next(iter(CHAINS.values()))})
    report = sweep(renamed)
    assert report.messages_sent == 0 and level(services, task_id) != "level-2"
    assert any("name a chain that is not configured" in r.getMessage() for r in caplog.records)


def test_the_sweep_advances_only_the_due_escalations(services: Services, m: Messaging) -> None:
    """Five open Tasks: a chain not started yet, one waiting, one overdue, one acknowledged, and one
    that is no escalation (no chain). The sweep acts on the first and the overdue one only."""
    s = services
    fresh = open_task(s, m, 1, timedelta(0))
    started = s.store.read("Task", fresh)  # back to "chain recorded, level 1 not notified yet"
    s.store.update({**started, "businessStatus": {"coding": [{"system": LEVEL_SYSTEM, "code": "0"}]},
                    "extension": [e for e in started["extension"] if e["url"] == "urn:vigil:escalation-chain"]})
    waiting, overdue = open_task(s, m, 2, timedelta(minutes=5)), open_task(s, m, 3, timedelta(minutes=20))
    acked = open_task(s, m, 4, timedelta(minutes=20))
    assert record_acknowledgement(m, acked, "Practitioner/nurse-1").status == "acknowledged"
    other = s.store.update({"resourceType": "Task", "id": "other", "status": "requested", "intent": "order",
                            "focus": {"reference": "DetectedIssue/x"}, "for": {"reference": "Patient/p1"}}).resource

    report = sweep(m)
    assert (report.examined, report.failed) == (2, 0)
    assert [level(s, t) for t in (fresh, waiting, overdue, acked)] == ["level-1", "level-1", "level-2",
                                                                       "acknowledged"]
    assert s.store.read("Task", "other")["meta"]["versionId"] == other["meta"]["versionId"]
