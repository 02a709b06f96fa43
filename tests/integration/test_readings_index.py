"""The embedded store's readings index answers rule windows exactly as searching and decoding the
Observations does, stays exact across updates and deletes, and is built for files written before it."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fhirstore.port import FhirStore
from fhirstore.sqlite import SqliteFhirStore
from handlers.patient_data import load_readings

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
METRICS = frozenset({"systolic_bp", "diastolic_bp", "heart_rate", "spo2", "body_weight"})
SINCE = datetime(2026, 10, 3, tzinfo=UTC)


class SearchOnly:
    """The same store seen through the port alone (no index): the search-and-decode path."""

    def __init__(self, store: FhirStore) -> None:
        self._store = store

    def search(self, *args: Any, **kwargs: Any) -> Any:
        return self._store.search(*args, **kwargs)


def quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def obs(oid: str, patient: str, code: str, when: str | dict[str, str], *, status: str = "final",
        **value: Any) -> dict[str, Any]:
    effective = {"effectivePeriod": when} if isinstance(when, dict) else {"effectiveDateTime": when}
    return {"resourceType": "Observation", "id": oid, "status": status,
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "subject": {"reference": f"Patient/{patient}"}, **effective, **value}


def corpus() -> list[dict[str, Any]]:
    out = []
    day = datetime(2026, 10, 1, 8, tzinfo=UTC)
    for i in range(12):
        when = (day + timedelta(hours=9 * i)).isoformat()
        out.append(obs(f"bp-{i}", "p1", "85354-9", when, component=[
            {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, "valueQuantity": quantity(120 + i, "mm[Hg]")},
            {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "valueQuantity": quantity(80, "mm[Hg]")}]))
        out.append(obs(f"hr-{i}", "p1", "8867-4", when, valueQuantity=quantity(70 + i, "/min")))
        out.append(obs(f"w-{i}", "p1" if i % 2 else "p2", "29463-7", when, valueQuantity=quantity(176.4, "[lb_av]")))
    out += [
        obs("spo2-alt", "p1", "59408-5", "2026-10-04T10:00:00+02:00", valueQuantity=quantity(94, "%")),
        obs("spo2-err", "p1", "2708-6", "2026-10-04T11:00:00Z", status="entered-in-error",
            valueQuantity=quantity(80, "%")),
        # A period ending inside the window, starting before it: `ge` matches it.
        obs("hr-period", "p1", "8867-4", {"start": "2026-10-02T23:00:00Z", "end": "2026-10-03T01:00:00Z"},
            valueQuantity=quantity(66, "/min")),
        # A systolic value under its own code is not a panel: the panel search does not find it.
        obs("sys-alone", "p1", "8480-6", "2026-10-04T09:00:00Z", valueQuantity=quantity(190, "mm[Hg]")),
        obs("no-value", "p1", "8867-4", "2026-10-04T09:30:00Z", dataAbsentReason={"text": "error"}),
        obs("bad-unit", "p1", "8867-4", "2026-10-04T09:40:00Z", valueQuantity=quantity(70, "kg")),
    ]
    return out


def both(store: SqliteFhirStore, patient: str = "Patient/p1") -> tuple[list, list]:
    indexed = load_readings(store, patient, METRICS, SINCE)
    searched = load_readings(SearchOnly(store), patient, METRICS, SINCE)  # type: ignore[arg-type]
    return sorted(indexed), sorted(searched)


def test_the_index_answers_the_window_the_search_does(tmp_path: Path) -> None:
    with SqliteFhirStore(tmp_path / "fhir.db") as store:
        for resource in corpus():
            store.update(resource)
        indexed, searched = both(store)
        assert indexed == searched
        assert {r.metric for r in indexed} == METRICS
        weights = [r for r in indexed if r.metric == "body_weight"]
        assert weights and all(round(r.value, 2) == 80.01 and r.original_unit == "[lb_av]" for r in weights)
        assert "Observation/hr-period" in {r.ref for r in indexed}
        assert not {"Observation/spo2-err", "Observation/sys-alone"} & {r.ref for r in indexed}
        assert both(store, "Patient/p2")[0] == both(store, "Patient/p2")[1] != []


def test_updates_and_deletes_keep_the_index_on_the_current_version(tmp_path: Path) -> None:
    with SqliteFhirStore(tmp_path / "fhir.db") as store:
        for resource in corpus():
            store.update(resource)
        changed = obs("hr-11", "p1", "8867-4", "2026-10-05T11:00:00Z", valueQuantity=quantity(140, "/min"))
        store.update(changed)
        store.update({**obs("hr-10", "p1", "8867-4", "2026-10-04T23:00:00Z"), "status": "entered-in-error",
                      "valueQuantity": quantity(99, "/min")})
        store.delete("Observation", "hr-9")
        indexed, searched = both(store)
        assert indexed == searched
        heart = {r.ref: r.value for r in indexed if r.metric == "heart_rate"}
        assert heart["Observation/hr-11"] == 140
        assert "Observation/hr-10" not in heart and "Observation/hr-9" not in heart
        store.update(obs("hr-9", "p1", "8867-4", "2026-10-05T12:00:00Z", valueQuantity=quantity(61, "/min")))
        indexed, searched = both(store)
        assert indexed == searched and ("heart_rate", 61.0) in {(r.metric, r.value) for r in indexed}


def test_a_file_written_before_the_index_is_indexed_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "fhir.db"
    with SqliteFhirStore(path) as store:
        for resource in corpus():
            store.update(resource)
        expected = both(store)[1]
    with sqlite3.connect(path) as db:  # the file as an older Vigil left it: schema 1, no index tables
        db.execute("DROP TABLE readings")
        db.execute("DROP TABLE readings_built")
        db.execute("PRAGMA user_version = 1")
    with SqliteFhirStore(path) as store:
        indexed, searched = both(store)
        assert indexed == searched == expected
        assert len(indexed) > 20
    with SqliteFhirStore(path) as store:  # opened again: built once, not rebuilt
        rows = store._db().execute("SELECT COUNT(*) FROM readings").fetchone()[0]
        assert rows == len(load_readings(store, "Patient/p1", METRICS, datetime(2000, 1, 1, tzinfo=UTC))) + \
            len(load_readings(store, "Patient/p2", METRICS, datetime(2000, 1, 1, tzinfo=UTC)))
