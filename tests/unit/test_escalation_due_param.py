"""Task `escalation-due`, Vigil's own search parameter: the due time `notifications.escalation`
keeps in an extension, indexed so the escalation sweep can ask for the due Tasks only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from common.clock import FixedClock, iso
from fhirstore.errors import InvalidResource
from fhirstore.index_rows import PathStep, extractor_for, path_steps
from fhirstore.rest import capability_statement
from fhirstore.search_params import primary_date
from fhirstore.sqlite import SqliteFhirStore
from notifications.escalation import DUE_EXT, LEVEL_SYSTEM, acknowledge, advance
from notifications.escalation_chains import load_chains

NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
CHAIN = load_chains("""
chains:
  short:
    levels:
      - {notify: [nurse], channels: [sms], wait: 15m}
      - {notify: [physician], channels: [sms], wait: 15m}
""")["short"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def task(task_id: str) -> dict:
    """An alert Task as `rules.episode_resources` writes it, before its chain starts."""
    return {"resourceType": "Task", "id": task_id, "status": "requested", "intent": "order",
            "businessStatus": {"coding": [{"system": LEVEL_SYSTEM, "code": "0"}], "text": "not escalated"},
            "focus": {"reference": f"DetectedIssue/{task_id}"}, "for": {"reference": "Patient/p1"},
            "authoredOn": iso(NOW - timedelta(hours=2)), "lastModified": iso(NOW - timedelta(hours=2))}


def started(task_id: str, at: datetime) -> dict:
    """The Task after level 1 was notified at `at` (due `at` + 15 min)."""
    return advance(task(task_id), CHAIN, at).task


def micros(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)


@pytest.fixture
def store(tmp_path: Path):
    with SqliteFhirStore(tmp_path / "fhir.db", clock=FixedClock(NOW)) as s:
        yield s


def ids(store: SqliteFhirStore, params: dict) -> set[str]:
    return {r["id"] for r in store.search("Task", params).resources}


def test_paths_select_extensions_by_url_even_when_the_url_has_dots() -> None:
    assert path_steps("component.code") == (PathStep("component"), PathStep("code"))
    assert path_steps("extension('http://hl7.org/fhir/StructureDefinition/x.y').valueDateTime") == (
        PathStep("extension", "http://hl7.org/fhir/StructureDefinition/x.y"), PathStep("valueDateTime"))


@pytest.mark.parametrize("path", ["", "code.", "a..b", "code('x').text", "extension('x'.value", "extension().value"])
def test_unreadable_paths_are_rejected(path: str) -> None:
    with pytest.raises(ValueError, match="search parameter path"):
        path_steps(path)


def test_the_due_time_the_state_machine_writes_is_indexed_and_other_extensions_are_not() -> None:
    running = started("t1", NOW)
    running["extension"].append({"url": "urn:example:other-date", "valueDateTime": iso(NOW)})
    due_rows = [row for row in extractor_for("Task")(running).dates if row[0] == "escalation-due"]
    assert due_rows == [("escalation-due", micros(NOW + timedelta(minutes=15)),
                         micros(NOW + timedelta(minutes=15)) + 999)]  # iso() writes milliseconds
    assert not [row for row in extractor_for("Task")(task("t2")).dates if row[0] == "escalation-due"]


def test_search_by_due_time_finds_only_the_due_tasks(store: SqliteFhirStore) -> None:
    store.update(started("due", NOW - timedelta(minutes=20)))
    store.update(started("due-now", NOW - timedelta(minutes=15)))
    store.update(started("waiting", NOW - timedelta(minutes=5)))
    store.update(task("new"))
    done = acknowledge(started("acked", NOW - timedelta(minutes=30)), "Practitioner/n1", NOW).task
    store.update(done)
    assert ids(store, {"escalation-due": f"le{iso(NOW)}"}) == {"due", "due-now"}
    assert ids(store, {"escalation-due": f"gt{iso(NOW)}"}) == {"waiting"}
    assert ids(store, {"escalation-due:missing": "true"}) == {"new", "acked"}

    # The index follows the Task: once advanced, its new due time is in the future.
    store.update(advance(store.read("Task", "due"), CHAIN, NOW).task)
    assert ids(store, {"escalation-due": f"le{iso(NOW)}"}) == {"due-now"}


def test_exhausted_tasks_have_no_due_time(store: SqliteFhirStore) -> None:
    exhausted = started("x", NOW - timedelta(hours=1))
    exhausted = advance(exhausted, CHAIN, NOW - timedelta(minutes=40)).task  # level 2
    exhausted = advance(exhausted, CHAIN, NOW).task  # nobody acknowledged level 2 either
    assert exhausted["businessStatus"]["coding"][0]["code"] == "exhausted"
    store.update(exhausted)
    assert ids(store, {"escalation-due:missing": "true", "business-status:not": f"{LEVEL_SYSTEM}|exhausted"}) == set()
    assert ids(store, {"escalation-due:missing": "true"}) == {"x"}


def test_a_task_with_an_unreadable_due_time_is_refused_naming_the_element(store: SqliteFhirStore) -> None:
    bad = task("bad")
    bad["extension"] = [{"url": DUE_EXT, "valueDateTime": "2026-11-20T15:00:00"}]  # no UTC offset
    with pytest.raises(InvalidResource, match=r"Task/bad: extension\('urn:vigil:escalation-due'\)"
                                              r"\.valueDateTime: .*no UTC offset"):
        store.update(bad)


def test_the_r4_primary_date_and_the_capability_statement() -> None:
    assert primary_date("Task") == "authored-on"  # one value per Task; the due time is not it
    [task_type] = [r for r in capability_statement("http://x")["rest"][0]["resource"] if r["type"] == "Task"]
    assert {"name": "escalation-due", "type": "date"} in task_type["searchParam"]
