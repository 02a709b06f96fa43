"""The enrollment cache never serves a CarePlan, Goal or Patient older than the last write of one,
even when the write comes from another process on the same store file (a second host)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fhirstore.sqlite import SqliteFhirStore
from handlers.enrollment_cache import EnrollmentCache
from handlers.patient_data import load_enrollment, load_patient_rules
from rules.loader import load_rulesets
from runtime.cohort import careplan

NOW = datetime(2026, 11, 20, 15, tzinfo=UTC)


def goal(value: int) -> dict:
    return {"resourceType": "Goal", "id": "g1", "lifecycleStatus": "active", "subject": {"reference": "Patient/p1"},
            "description": {"text": "weight"}, "target": [{"measure": {"coding": [
                {"system": "http://loinc.org", "code": "29463-7"}]},
                "detailQuantity": {"value": value, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}]}


def test_a_write_by_another_host_is_seen_at_the_next_reading(tmp_path: Path) -> None:
    rulesets = load_rulesets(Path(__file__).resolve().parents[2] / "rules" / "library")
    path = tmp_path / "fhir.db"
    with SqliteFhirStore(path) as mine, SqliteFhirStore(path) as theirs:
        mine.update({"resourceType": "Patient", "id": "p1", "active": True})
        mine.update(careplan("p1", "hypertension"))
        mine.update(goal(80))
        cache = EnrollmentCache()

        def rules():
            return load_patient_rules(mine, "Patient/p1", rulesets, NOW, cache=cache)

        first = rules()
        assert first is not None and [rs.program.id for rs in first.rulesets] == ["hypertension"]
        assert rules() is not None and cache.hits == 1 and cache.loads == 1  # nothing changed: served

        theirs.update(goal(75))  # another process updates the goal
        served = cache.get(mine, "Patient/p1", lambda: load_enrollment(mine, "Patient/p1"))
        assert served.goals[0]["target"][0]["detailQuantity"]["value"] == 75
        assert cache.loads == 2

        theirs.update(careplan("p1", "copd"))  # a new enrollment, by the other host
        assert sorted(rs.program.id for rs in rules().rulesets) == ["copd", "hypertension"]  # type: ignore[union-attr]

        revoked = careplan("p1", "hypertension")
        revoked["status"] = "revoked"
        theirs.update(revoked)
        theirs.delete("CarePlan", careplan("p1", "copd")["id"])
        assert rules() is None  # no longer enrolled: the cache did not answer from before
        assert cache.hits == 1


def test_a_careplan_event_drops_its_patient(tmp_path: Path) -> None:
    with SqliteFhirStore(tmp_path / "fhir.db") as store:
        store.update({"resourceType": "Patient", "id": "p1"})
        cache = EnrollmentCache()
        calls = []

        def load():
            calls.append(1)
            return load_enrollment(store, "Patient/p1")

        cache.get(store, "Patient/p1", load)
        cache.get(store, "Patient/p1", load)
        cache.forget("Patient/p1")
        cache.get(store, "Patient/p1", load)
        assert len(calls) == 2
