"""ViewDefinition runner: rows, RPM-shaped views and precise errors for bad views."""

from __future__ import annotations

import pytest

from analytics.views import ViewDefinitionError, compile_view, run_view
from analytics.views.duck import shipped_views

BP = {
    "resourceType": "Observation", "id": "bp1", "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2026-11-20T09:59:00Z",
    "component": [
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
         "valueQuantity": {"value": 141, "unit": "mmHg"}},
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
         "valueQuantity": {"value": 92.5, "unit": "mmHg"}},
    ],
}

BP_VIEW = {
    "resource": "Observation",
    "constant": [{"name": "sys", "valueString": "8480-6"}, {"name": "dia", "valueString": "8462-4"}],
    "where": [{"path": "code.coding.exists(system='http://loinc.org' and code='85354-9')"}],
    "select": [
        {"column": [
            {"name": "id", "path": "getResourceKey()"},
            {"name": "patient", "path": "subject.getReferenceKey(Patient)"},
            {"name": "effective", "path": "effective.ofType(dateTime)"},
        ]},
        {"forEach": "component.where(code.coding.exists(code=%sys)).first()",
         "column": [{"name": "systolic", "path": "value.ofType(Quantity).value"}]},
        {"forEach": "component.where(code.coding.exists(code=%dia)).first()",
         "column": [{"name": "diastolic", "path": "value.ofType(Quantity).value"}]},
    ],
}


def test_blood_pressure_view_gives_one_row_with_both_components() -> None:
    rows = run_view(BP_VIEW, [BP, {"resourceType": "Patient", "id": "p1"}])
    assert rows == [{"id": "bp1", "patient": "p1", "effective": "2026-11-20T09:59:00Z",
                     "systolic": 141, "diastolic": 92.5}]


def test_reference_key_of_another_type_is_null() -> None:
    view = {"resource": "Observation",
            "select": [{"column": [{"name": "dev", "path": "subject.getReferenceKey(Device)"}]}]}
    assert run_view(view, [BP]) == [{"dev": None}]


@pytest.mark.parametrize(("view", "fragment"), [
    ({}, "ViewDefinition"),
    ({"select": [{"column": [{"name": "id", "path": "id"}]}]}, "resource"),
    ({"resource": "Patient", "select": [{"forEach": "@@", "column": [{"name": "a", "path": "id"}]}]},
     "select[0].forEach"),
    ({"resource": "Patient", "select": [{"column": [{"name": "1bad", "path": "id"}]}]}, "select[0].column[0].name"),
    ({"resource": "Patient", "select": [{"column": [{"name": "a", "path": "id"}, {"name": "a", "path": "id"}]}]},
     "repeated"),
    ({"resource": "Patient", "select": [{"unionAll": [{"column": [{"name": "a", "path": "id"}]},
                                                     {"column": [{"name": "b", "path": "id"}]}]}]},
     "select[0].unionAll[1]"),
])
def test_invalid_views_name_the_place(view: dict, fragment: str) -> None:
    with pytest.raises(ViewDefinitionError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        compile_view(view)


def test_many_values_without_collection_is_an_error_naming_the_column() -> None:
    view = {"resource": "Observation",
            "select": [{"column": [{"name": "codes", "path": "component.code.coding.code"}]}]}
    with pytest.raises(ViewDefinitionError, match="'codes' got 2 values"):
        run_view(view, [BP])
    view["select"][0]["column"][0]["collection"] = True
    assert run_view(view, [BP]) == [{"codes": ["8480-6", "8462-4"]}]


def test_where_that_is_not_boolean_is_an_error() -> None:
    view = {"resource": "Observation", "where": [{"path": "status"}],
            "select": [{"column": [{"name": "id", "path": "id"}]}]}
    with pytest.raises(ViewDefinitionError, match=r"where\[0\]\.path"):
        run_view(view, [BP])


def test_the_shipped_rpm_views_date_the_observations_vigils_own_ingest_writes(data_dir) -> None:
    """Vigil's ingest writes MedTech's Observations: `effectivePeriod` (start = end for a single
    reading), not `effectiveDateTime`. The RPM views must date those readings, or every
    reading-day count and time series built on them is empty."""
    from fhirstore.paging import search_all
    from handlers.ingest import RawMessage, handle_device_messages
    from runtime.bootstrap import ingest_deps
    from tests.support.pipeline import add_patient, make_host, reading

    host = make_host(data_dir)
    try:
        add_patient(host.services, "p1")
        handle_device_messages(
            [
                RawMessage(reading("p1", "heart_rate", "2026-11-20T08:15:00-05:00", {"bpm": 71})),
                RawMessage(
                    reading("p1", "blood_pressure", "2026-11-20T08:16:00-05:00", {"systolic": 141, "diastolic": 92})
                ),
            ],
            ingest_deps(host.services),
        )
        observations = search_all(host.services.store, "Observation", {})
    finally:
        host.services.close()
    assert observations and all("effectiveDateTime" not in o for o in observations)  # the premise
    views = shipped_views()
    days = run_view(views["reading_days"], observations)
    assert sorted(r["day"] for r in days) == ["2026-11-20", "2026-11-20"]
    assert [r["effective"] for r in run_view(views["blood_pressure"], observations)] == ["2026-11-20T13:16:00Z"]
    assert {r["effective"] for r in run_view(views["vital_signs"], observations)} >= {"2026-11-20T13:15:00Z"}
