"""A heart-failure alert through function_app.py on the local host: a heart-failure patient's daily
morning weights, then a 1.2 kg overnight gain, open exactly one explained alert episode; replaying
every FHIR event afterwards opens nothing and records no new message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.detectedissue import DetectedIssue
from fhir.resources.R4B.flag import Flag
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.task import Task

from common.clock import FixedClock, parse_instant
from fhirstore.events import event_grid_event
from fhirstore.paging import search_all
from rules.readings import readings_from_observation
from runtime.host import LocalHost
from tests.support.pipeline import add_patient, count, make_host, reading

ZONE = ZoneInfo("America/Chicago")
PATIENT = "hf-1"
# Morning weights (kg) from 14 to 18 November 2026, then 81.2 on the 19th: +1.2 kg overnight,
# over the library's 2 lb (0.91 kg) daily bound, under every other heart-failure rule.
STABLE = [80.0, 80.2, 79.9, 80.1, 80.0]
GAIN = 81.2


def _morning(day: int) -> datetime:
    return datetime(2026, 11, day, 7, 0, tzinfo=ZONE)


@pytest.fixture
def host(data_dir: Path) -> Iterator[LocalHost]:
    clock = FixedClock(_morning(14))
    h = make_host(data_dir, clock)
    # Only readings drive this test: the 15-minute sweep timer must not fire because the wall clock
    # happened to cross a quarter hour during the run.
    for spec in h.of_kind("timerTrigger"):
        spec.next_run = float("inf")
    h.acquire()
    add_patient(h.services, PATIENT, programs=("heart-failure",))
    patient = h.services.store.read("Patient", PATIENT)
    patient["extension"] = [{"url": "http://hl7.org/fhir/StructureDefinition/timezone", "valueCode": ZONE.key}]
    h.services.store.update(patient)
    yield h
    h.release()
    h.services.close()


def _deliver(host: LocalHost, day: int, kg: float) -> None:
    """One morning weight, synced a few minutes after it was taken, processed to the end."""
    taken = _morning(day)
    host.services.clock.set(taken + timedelta(minutes=10))  # type: ignore[attr-defined]
    host.publish_device_messages([reading(PATIENT, "body_weight", taken.isoformat(), {"weight": kg})])
    assert host.run_until_idle(timeout_s=60)


def _taken(obs: dict[str, Any]) -> datetime:
    # The ingest templates write MedTech's effectivePeriod; read it the way the rules do.
    return readings_from_observation(obs)[0].effective


def _observation_on(host: LocalHost, day: int) -> dict[str, Any]:
    [obs] = [o for o in search_all(host.services.store, "Observation", {"subject": f"Patient/{PATIENT}"})
             if _taken(o) == _morning(day).astimezone(UTC)]
    return obs


def _state(host: LocalHost) -> dict[str, Any]:
    s = host.services
    versions = {f"{r['resourceType']}/{r['id']}": r["meta"]["versionId"]
                for t in ("DetectedIssue", "Task", "Flag", "Communication", "Observation")
                for r in search_all(s.store, t, {})}
    return {"versions": versions, "outbox": len(s.channels["outbox"].provider.messages()),
            "dead_letters": s.dead_letters.count()}


def test_overnight_gain_opens_one_explained_episode_and_a_full_replay_adds_nothing(host: LocalHost) -> None:
    s = host.services
    for day, kg in enumerate(STABLE, start=14):
        _deliver(host, day, kg)
    assert count(s, "Observation") == 5
    assert count(s, "DetectedIssue") == 0, "stable weights must not alert"

    _deliver(host, 19, GAIN)

    # Exactly one episode, of the daily-gain rule, explained.
    [issue] = search_all(s.store, "DetectedIssue", {"patient": f"Patient/{PATIENT}"})
    assert issue["code"]["coding"][0]["code"] == "hf-weight-gain-day"
    assert (issue["status"], issue["severity"]) == ("preliminary", "high")
    detail = issue["detail"]
    assert "hf-weight-gain-day" in detail
    assert "1.2 kg (80 kg to 81.2 kg)" in detail  # the change, from yesterday's weight to today's
    assert ">= 0.91 kg (rule value 2 [lb_av])" in detail  # the threshold and where it came from
    assert "patient's time zone" in detail and "arrived late" not in detail
    assert "hf-1" not in detail  # identifiers travel in references, not in the text
    gained_from, gained_to = _observation_on(host, 18), _observation_on(host, 19)
    assert sorted(i["reference"] for i in issue["implicated"]) == sorted(
        [f"Observation/{gained_from['id']}", f"Observation/{gained_to['id']}"])
    assert parse_instant(issue["identifiedPeriod"]["start"]) == _taken(gained_to)

    task = s.store.read("Task", issue["id"])
    assert (task["status"], task["priority"], task["focus"]["reference"]) == (
        "requested", "urgent", f"DetectedIssue/{issue['id']}")
    flag = s.store.read("Flag", issue["id"])
    assert flag["status"] == "active"
    comms = search_all(s.store, "Communication", {})
    assert sorted(c["status"] for c in comms) == ["completed", "completed"]
    assert {c["about"][0]["reference"] for c in comms} == {f"DetectedIssue/{issue['id']}"}
    sms = next(m for m in s.channels["outbox"].provider.messages() if m["to"].startswith("+"))
    assert "81" not in sms["body"] and "weight" not in sms["body"].lower()  # PHI-minimal

    # Every resource Vigil wrote is valid FHIR (R4B models, the closest to R4).
    for model, type_ in ((DetectedIssue, "DetectedIssue"), (Task, "Task"), (Flag, "Flag"),
                         (Communication, "Communication"), (Observation, "Observation")):
        found = search_all(s.store, type_, {})
        assert found, type_
        for resource in found:
            model.model_validate(resource)

    # Replay: every Observation's Created event delivered again, newest first (so earlier readings
    # are judged against the later ones too), two hours later.
    before = _state(host)
    invocations = host.stats.invocations.get("on_fhir_event", 0)
    s.clock.advance(timedelta(hours=2))  # type: ignore[attr-defined]
    observations = sorted(search_all(s.store, "Observation", {}), key=_taken, reverse=True)
    assert len(observations) == 6
    for obs in observations:
        event = event_grid_event(action="created", resource_type="Observation", resource_id=obs["id"], version_id="1",
                                 account=s.settings.fhir_account, topic="replay",
                                 at=parse_instant(obs["meta"]["lastUpdated"]))
        assert host.bus.publish("eg:on_fhir_event", json.dumps(event).encode())
    assert host.run_until_idle(timeout_s=60)

    assert host.stats.invocations["on_fhir_event"] - invocations == 6  # the events were really handled
    assert count(s, "DetectedIssue") == 1
    assert _state(host) == before  # nothing new, nothing rewritten, no message, no dead letter
