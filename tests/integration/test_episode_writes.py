"""Opening an episode writes its Task and Flag in one transaction, the Task already carrying its
escalation chain and acknowledgement code (handlers.alerting.put_all_if_absent,
handlers.escalations.ready_to_escalate), and a replay after a crash before the DetectedIssue finds
them there and writes neither again. On the real embedded SQLite store."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.clock import FixedClock
from fhirstore.paging import search_all
from fhirstore.port import FhirStore
from handlers.alerting import put_all_if_absent
from handlers.fhir_events import EventDeps, handle_fhir_event
from notifications.ack_codes import ack_code_of
from notifications.escalation import chain_of
from rules.model import Ruleset
from runtime.bootstrap import Services, bootstrap, messaging
from runtime.settings import Settings
from tests.integration.test_store_reads_per_alert import crisis_reading
from tests.support.pipeline import DAYTIME, add_patient


class Recording:
    """The real store, recording each transaction Bundle's entries and each single update."""

    def __init__(self, store: FhirStore) -> None:
        self.store = store
        self.transactions: list[list[str]] = []
        self.updates: list[str] = []

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        self.transactions.append([e["request"]["url"] for e in bundle.get("entry") or []])
        return self.store.transaction(bundle)

    def update(self, resource: dict[str, Any], **kwargs: Any) -> Any:
        self.updates.append(f"{resource['resourceType']}/{resource['id']}")
        return self.store.update(resource, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@pytest.fixture
def services(data_dir: Path) -> Iterator[Services]:
    s = bootstrap(Settings.from_env({"VIGIL_CONTACT_PHONE": "+1-555-010-0100"}, data_dir=data_dir),
                  clock=FixedClock(DAYTIME))
    add_patient(s, "p1", phone="+15550100123", programs=("hypertension",))
    s.store.update({"resourceType": "Practitioner", "id": "nurse-1", "telecom": [{"system": "sms",
                                                                                  "value": "+15550100201"}]})
    s.store.update({"resourceType": "CareTeam", "id": "team-p1", "status": "active",
                    "subject": {"reference": "Patient/p1"}, "participant": [
                        {"role": [{"coding": [{"code": "nurse"}]}], "member": {"reference": "Practitioner/nurse-1"}}]})
    # The crisis rule with a Flag too, so the episode has both (validated again, as loaded).
    s.rulesets[:] = [Ruleset.model_validate({**rs.model_dump(), "rules": [
        {**r.model_dump(), "actions": {**r.actions.model_dump(), "flag": True}} if r.id == "htn-crisis"
        else r.model_dump() for r in rs.rules]}) for rs in s.rulesets]
    yield s
    s.close()


def _deps(s: Services, store: Recording) -> EventDeps:
    return EventDeps(messaging=dataclasses.replace(messaging(s), store=store), rulesets=s.rulesets,
                     dead_letters=s.dead_letters)


def test_task_and_flag_are_written_together_and_the_task_once_before_its_first_step(services: Services) -> None:
    s = services
    store = Recording(s.store)
    outcome = handle_fhir_event(crisis_reading(s), _deps(s, store))

    assert outcome.decisions["open"] == 1
    [task] = search_all(s.store, "Task", {"patient": "Patient/p1"})
    [flag] = search_all(s.store, "Flag", {"patient": "Patient/p1"})
    assert store.transactions[0] == [f"Task/{task['id']}", f"Flag/{flag['id']}"]
    # Version 1 is the Task as opened, with its chain and code; version 2 the level-1 step.
    first = s.store.vread("Task", task["id"], "1")
    assert ack_code_of(first) is not None and chain_of(first) is not None
    assert task["meta"]["versionId"] == "2" and task["businessStatus"]["coding"][0]["code"] == "level-1"
    assert store.updates.count(f"Task/{task['id']}") == 1  # the step only
    assert ack_code_of(task) == ack_code_of(first)


class Crash(Exception):
    pass


class CrashesBeforeTheMarker(Recording):
    """The process dies as it writes the DetectedIssue (the episode's marker, written last)."""

    def update(self, resource: dict[str, Any], **kwargs: Any) -> Any:
        if resource["resourceType"] == "DetectedIssue":
            raise Crash
        return super().update(resource, **kwargs)


def test_a_replay_after_a_crash_before_the_marker_writes_neither_again(services: Services) -> None:
    s = services
    event = crisis_reading(s)
    with pytest.raises(Crash):
        handle_fhir_event(event, _deps(s, CrashesBeforeTheMarker(s.store)))
    assert search_all(s.store, "DetectedIssue", {"patient": "Patient/p1"}) == []
    [task] = search_all(s.store, "Task", {"patient": "Patient/p1"})
    [flag] = search_all(s.store, "Flag", {"patient": "Patient/p1"})

    store = Recording(s.store)
    outcome = handle_fhir_event(event, _deps(s, store))

    assert outcome.decisions["open"] == 1 and outcome.messages_sent == 0  # sent before the crash
    assert store.transactions == []  # both found: neither written again
    assert s.store.read("Task", task["id"])["meta"]["versionId"] == task["meta"]["versionId"]
    assert s.store.read("Flag", flag["id"])["meta"]["versionId"] == flag["meta"]["versionId"]
    assert len(search_all(s.store, "DetectedIssue", {"patient": "Patient/p1"})) == 1  # the marker, now


def test_put_all_if_absent_writes_only_the_missing_ones(services: Services) -> None:
    s = services
    s.store.update({"resourceType": "Basic", "id": "kept", "code": {"text": "before"}})
    store = Recording(s.store)
    out = put_all_if_absent(store, [{"resourceType": "Basic", "id": "kept", "code": {"text": "after"}},
                                    {"resourceType": "Basic", "id": "new", "code": {"text": "new"}}])
    assert [r["code"]["text"] for r in out] == ["before", "new"]  # never overwrites
    assert store.transactions == [["Basic/new"]]
    assert out[1]["meta"]["versionId"] == "1"
    assert put_all_if_absent(store, []) == []
