"""SqliteFhirStore search: parameter kinds, date range semantics, modifiers, sorting and paging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from common.clock import FixedClock
from fhirstore.errors import InvalidResource, InvalidSearch
from fhirstore.sqlite import SqliteFhirStore

LOINC = "http://loinc.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
IOMT = "https://azure.microsoft.com/en-us/services/iomt-fhir-connector/"


def concept(*codes: tuple[str, str]) -> dict:
    return {"coding": [{"system": system, "code": code} for system, code in codes]}


def observation(id: str, code: tuple[str, str] = (LOINC, "8867-4"), subject: str = "Patient/p1", **extra) -> dict:
    return {
        "resourceType": "Observation", "id": id, "status": "final",
        "category": [concept((CATEGORY, "vital-signs"))],
        "code": concept(code), "subject": {"reference": subject}, **extra,
    }


def blood_pressure(id: str, subject: str = "Patient/p1", **extra) -> dict:
    return observation(id, (LOINC, "85354-9"), subject, component=[
        {"code": concept((LOINC, "8480-6"), (IOMT, "systolic")), "valueQuantity": {"value": 150}},
        {"code": concept((LOINC, "8462-4"), (IOMT, "diastolic")), "valueQuantity": {"value": 95}},
    ], **extra)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2024, 3, 10, 8, 0, tzinfo=UTC))


@pytest.fixture
def store(tmp_path: Path, clock: FixedClock):
    with SqliteFhirStore(tmp_path / "fhir.db", clock=clock) as s:
        yield s


@pytest.fixture
def dated(store: SqliteFhirStore) -> SqliteFhirStore:
    """Five Observations whose effective times exercise the range rules, plus one with none."""
    store.update(observation("o1", effectiveDateTime="2024-03-05T10:00:00Z"))
    store.update(observation("o2", effectiveDateTime="2024-03-05T23:30:00-02:00"))  # 2024-03-06T01:30Z
    store.update(observation("o3", effectivePeriod={"start": "2024-03-04T22:00:00Z", "end": "2024-03-05T02:00:00Z"}))
    store.update(observation("o4", effectiveDateTime="2024-03"))  # the whole month
    store.update(observation("o5", effectiveInstant="2024-02-28T12:00:00.250Z"))
    store.update(observation("o6"))
    return store


def ids(store: SqliteFhirStore, resource_type: str = "Observation", **params) -> list[str]:
    result = store.search(resource_type, {k.replace("_", "-") if not k.startswith("_") else k: v
                                          for k, v in params.items()})
    assert result.total == len(result.resources) or result.next_params
    return sorted(r["id"] for r in result.resources)


DATE_CASES = [
    ("2024", ["o1", "o2", "o3", "o4", "o5"]),
    ("2024-03", ["o1", "o2", "o3", "o4"]),
    ("2024-03-05", ["o1"]),
    ("eq2024-03-05", ["o1"]),
    ("ne2024-03-05", ["o2", "o3", "o4", "o5"]),
    ("ge2024-03-05", ["o1", "o2", "o4"]),
    ("gt2024-03-05", ["o2", "o4"]),
    ("lt2024-03-05", ["o3", "o4", "o5"]),
    ("le2024-03-05", ["o1", "o3", "o4", "o5"]),
    ("sa2024-03-05", ["o2"]),
    ("eb2024-03-05", ["o5"]),
    ("2024-03-05T12:00:00+02:00", ["o1"]),
    ("2024-03-05T10:00Z", ["o1"]),
    ("2024-03-06T01:30:00Z", ["o2"]),
    ("2024-02-28T12:00:00Z", ["o5"]),
    ("2024-02-28T12:00:00.2Z", ["o5"]),
    ("2024-02-28T12:00:00.250Z", ["o5"]),
    ("2024-02-28T12:00:00.251Z", []),
    ("2024-03-05,2024-03-06", ["o1", "o2"]),
    ("ge2024-03-05T12:00:00 02:00", ["o1", "o2", "o4"]),  # '+' decoded to a space by a form parser
]


@pytest.mark.parametrize(("value", "expected"), DATE_CASES)
def test_date_prefixes_and_precision_follow_range_semantics(dated: SqliteFhirStore, value, expected) -> None:
    assert ids(dated, date=value) == expected


@pytest.mark.parametrize(("value", "expected"), DATE_CASES)
def test_date_rules_hold_when_the_subject_drives_the_search(dated: SqliteFhirStore, value, expected) -> None:
    # The subject's reference rows carry each resource's date, which narrows the candidates first.
    assert ids(dated, date=value, subject="Patient/p1") == expected
    assert ids(dated, date=value, subject="Patient/p2") == []


def test_repeated_date_parameters_are_anded_into_a_window(dated: SqliteFhirStore) -> None:
    day = ["ge2024-03-05T00:00:00Z", "lt2024-03-06T00:00:00Z"]

    assert ids(dated, date=day) == ["o1", "o3", "o4"]  # o3 and o4 overlap the day


def test_date_missing(dated: SqliteFhirStore) -> None:
    assert ids(dated, **{"date:missing": "true"}) == ["o6"]
    assert len(ids(dated, **{"date:missing": "false"})) == 5


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2024-13", "month must be 01-12"),
        ("2024-02-30", "not a valid date"),
        ("2024-03-05T10:00:00", "has a time but no UTC offset"),
        ("ap2024", "unsupported date prefix 'ap'"),
        ("last week", "unsupported date prefix 'la'"),
        ("05/03/2024", "is not a FHIR date"),
    ],
)
def test_bad_dates_are_rejected(dated: SqliteFhirStore, value, message) -> None:
    with pytest.raises(InvalidSearch, match=message):
        dated.search("Observation", {"date": value})


def test_sort_by_date_uses_start_ascending_end_descending(dated: SqliteFhirStore) -> None:
    def order(sort: str) -> list[str]:
        return [r["id"] for r in dated.search("Observation", {"_sort": sort}).resources]

    assert order("date") == ["o5", "o4", "o3", "o1", "o2", "o6"]
    assert order("-date") == ["o4", "o2", "o1", "o3", "o5", "o6"]
    assert order("-_id") == ["o6", "o5", "o4", "o3", "o2", "o1"]
    by_subject = dated.search("Observation", {"patient": "p1", "_sort": "-date,_id", "_count": "4"})
    assert [r["id"] for r in by_subject.resources] == ["o4", "o2", "o1", "o3"]


def test_multi_key_sort_and_last_updated(store: SqliteFhirStore, clock: FixedClock) -> None:
    for id, status in (("b", "final"), ("a", "amended"), ("c", "final")):
        store.update(observation(id, status=status))
        clock.advance(timedelta(minutes=1))

    by_updated = [r["id"] for r in store.search("Observation", {"_sort": "-_lastUpdated"}).resources]
    by_updated_then_id = [r["id"] for r in store.search("Observation", {"_sort": "_lastUpdated,_id"}).resources]

    assert by_updated == ["c", "a", "b"]
    assert by_updated_then_id == ["b", "a", "c"]
    with pytest.raises(InvalidSearch, match="cannot sort Observation by 'status'.*_id, _lastUpdated, date"):
        store.search("Observation", {"_sort": "status"})


def test_last_updated_search(store: SqliteFhirStore, clock: FixedClock) -> None:
    store.update(observation("early"))
    clock.advance(timedelta(days=1))
    store.update(observation("late"))

    assert ids(store, _lastUpdated="ge2024-03-11") == ["late"]
    assert ids(store, _lastUpdated="2024-03-10") == ["early"]
    assert ids(store, _lastUpdated="lt2024-03-10T08:00:00.001Z") == ["early"]


def test_token_forms(store: SqliteFhirStore) -> None:
    store.update(observation("loinc"))
    store.update(observation("local", code=("urn:local", "8867-4")))
    store.update(observation("bare", code=("", "8867-4")))
    store.update(observation("other", code=(LOINC, "29463-7")))

    assert ids(store, code="8867-4") == ["bare", "local", "loinc"]
    assert ids(store, code=f"{LOINC}|8867-4") == ["loinc"]
    assert ids(store, code="|8867-4") == ["bare"]
    assert ids(store, code=f"{LOINC}|") == ["loinc", "other"]
    assert ids(store, code=f"{LOINC}|8867-4,urn:local|8867-4") == ["local", "loinc"]
    assert ids(store, code=["8867-4", f"{LOINC}|"]) == ["loinc"]  # repeated = AND
    assert ids(store, **{"code:not": f"{LOINC}|8867-4"}) == ["bare", "local", "other"]


def test_component_code_and_combo_code(store: SqliteFhirStore) -> None:
    store.update(blood_pressure("bp"))
    store.update(observation("systolic-alone", code=(LOINC, "8480-6")))

    assert ids(store, code="8480-6") == ["systolic-alone"]
    assert ids(store, component_code="8480-6") == ["bp"]
    assert ids(store, component_code=f"{IOMT}|diastolic") == ["bp"]
    assert ids(store, combo_code="8480-6") == ["bp", "systolic-alone"]
    assert ids(store, combo_code="85354-9") == ["bp"]


def test_reference_forms_and_the_patient_alias(store: SqliteFhirStore) -> None:
    store.update(observation("mine", subject="Patient/p1"))
    store.update(observation("absolute", subject="https://fhir.example.org/fhir/Patient/p1"))
    store.update(observation("group", subject="Group/p1"))
    store.update(observation("other", subject="Patient/p2"))

    assert ids(store, subject="Patient/p1") == ["absolute", "mine"]
    assert ids(store, subject="p1") == ["absolute", "group", "mine"]
    assert ids(store, **{"subject:Group": "p1"}) == ["group"]
    assert ids(store, patient="p1") == ["absolute", "mine"]
    assert ids(store, patient="Patient/p1,Patient/p2") == ["absolute", "mine", "other"]
    assert ids(store, patient="Group/p1") == []
    with pytest.raises(InvalidSearch, match="names another resource type"):
        store.search("Observation", {"subject:Group": "Patient/p1"})


def test_index_follows_updates_and_deletes(store: SqliteFhirStore) -> None:
    store.update(observation("o", code=(LOINC, "8867-4")))
    store.update(observation("o", code=(LOINC, "29463-7")))

    assert ids(store, code="8867-4") == []
    assert ids(store, code="29463-7") == ["o"]
    store.delete("Observation", "o")
    assert ids(store, code="29463-7") == []
    assert store.search("Observation").total == 0


def test_id_search_and_escaped_commas(store: SqliteFhirStore) -> None:
    store.update({"resourceType": "Patient", "id": "a", "identifier": [{"system": "urn:x", "value": "1,2"}]})
    store.update({"resourceType": "Patient", "id": "b", "active": True})

    assert ids(store, "Patient", _id="a,b,zz") == ["a", "b"]
    assert ids(store, "Patient", identifier="urn:x|1\\,2") == ["a"]
    assert ids(store, "Patient", identifier="urn:x|1") == []
    assert ids(store, "Patient", **{"identifier:missing": "true"}) == ["b"]


def test_other_types_parameters(store: SqliteFhirStore) -> None:
    store.update({"resourceType": "Task", "id": "t1", "status": "requested", "for": {"reference": "Patient/p1"},
                  "businessStatus": {"text": "x", "coding": [{"system": "urn:vigil:escalation", "code": "level-1"}]},
                  "focus": {"reference": "DetectedIssue/d1"}, "owner": {"reference": "CareTeam/ct"},
                  "priority": "urgent", "identifier": [{"system": "urn:vigil:task", "value": "k1"}]})
    store.update({"resourceType": "Task", "id": "t2", "status": "completed", "for": {"reference": "Patient/p1"}})
    store.update({"resourceType": "Questionnaire", "id": "q", "url": "http://vigil.example/q/phq9",
                  "status": "active"})
    store.update({"resourceType": "QuestionnaireResponse", "id": "qr", "status": "completed",
                  "questionnaire": "http://vigil.example/q/phq9|2.0", "subject": {"reference": "Patient/p1"},
                  "authored": "2024-03-05T09:00:00+01:00"})
    store.update({"resourceType": "DetectedIssue", "id": "d1", "status": "final",
                  "patient": {"reference": "Patient/p1"}, "identifiedDateTime": "2024-03-05T10:00:00Z",
                  "implicated": [{"reference": "Observation/o1"}]})
    store.update({"resourceType": "CarePlan", "id": "cp", "status": "active", "intent": "plan",
                  "subject": {"reference": "Patient/p1"},
                  "instantiatesCanonical": ["http://vigil.example/PlanDefinition/htn"]})
    store.update({"resourceType": "CareTeam", "id": "ct", "status": "active",
                  "participant": [{"member": {"reference": "Practitioner/dr1"}}]})
    store.update({"resourceType": "Patient", "id": "p1", "telecom": [{"system": "phone", "value": "+15550100"}]})
    store.update({"resourceType": "Flag", "id": "f", "status": "active", "subject": {"reference": "Patient/p1"},
                  "period": {"start": "2024-03-01T00:00:00Z"}})

    assert ids(store, "Task", patient="p1", status="requested") == ["t1"]
    assert ids(store, "Task", **{"status:not": "completed,cancelled"}) == ["t1"]
    assert ids(store, "Task", business_status="urn:vigil:escalation|level-1", focus="DetectedIssue/d1",
               owner="CareTeam/ct", priority="urgent", identifier="urn:vigil:task|k1") == ["t1"]
    assert ids(store, "Questionnaire", url="http://vigil.example/q/phq9") == ["q"]
    assert ids(store, "QuestionnaireResponse", questionnaire="http://vigil.example/q/phq9") == ["qr"]
    assert ids(store, "QuestionnaireResponse", questionnaire="http://vigil.example/q/phq9|2.0") == ["qr"]
    assert ids(store, "QuestionnaireResponse", authored="2024-03-05T08:00:00Z") == ["qr"]
    assert ids(store, "DetectedIssue", patient="p1", identified="ge2024-03-05", implicated="Observation/o1") == ["d1"]
    assert ids(store, "CarePlan", instantiates_canonical="http://vigil.example/PlanDefinition/htn") == ["cp"]
    assert ids(store, "CareTeam", participant="Practitioner/dr1") == ["ct"]
    assert ids(store, "Patient", telecom="+15550100") == ["p1"]
    assert ids(store, "Flag", date="ge2099-01-01") == ["f"]  # an open period runs on
    assert ids(store, "Flag", date="2024-03") == []  # ... so no month contains it


def test_count_summary_and_paging(store: SqliteFhirStore) -> None:
    for n in range(7):
        store.update(observation(f"o{n}"))

    counted = store.search("Observation", {"_summary": "count"})
    assert (counted.resources, counted.total) == ([], 7)
    assert store.search("Observation", {"_count": "0"}).resources == []

    seen, params, pages = [], {"code": "8867-4", "_count": "3", "_sort": "_id"}, 0
    while params is not None:
        page = store.search("Observation", params)
        assert page.total == 7
        seen += [r["id"] for r in page.resources]
        params, pages = page.next_params, pages + 1
    assert seen == [f"o{n}" for n in range(7)] and pages == 3


def test_count_is_capped_and_defaulted(store: SqliteFhirStore) -> None:
    store.transaction({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation(f"o{n}"), "request": {"method": "PUT", "url": f"Observation/o{n}"}}
        for n in range(1005)]})

    assert len(store.search("Observation").resources) == 100
    big = store.search("Observation", {"_count": "5000"})
    assert (len(big.resources), big.total, big.next_params["_offset"]) == (1000, 1005, "1000")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"colour": "red"}, "unknown search parameter 'colour' for Observation; supported parameters: _count"),
        ({"subject.name": "x"}, "chained search 'subject.name' is not supported on Observation"),
        ({"_include": "Observation:subject"}, "unknown search parameter '_include' for Observation"),
        ({"code": ""}, "'code' of Observation has an empty value"),
        ({"code:text": "bp"}, "modifier ':text' is not supported on token parameter 'code'"),
        ({"date:exact": "2024"}, "modifier ':exact' is not supported on 'date'"),
        ({"_count": "-1"}, "_count must be a non-negative integer"),
        ({"_count": ["1", "2"]}, "'_count' may appear only once"),
        ({"_summary": "true"}, "_summary=true is not supported"),
        ({"status:missing": "yes"}, "status:missing takes true or false"),
        ({"code": "|"}, "neither a system nor a code"),
        ({"subject": 3.5}, "must be a string or a list of strings"),
    ],
)
def test_bad_searches_say_what_is_wrong(store: SqliteFhirStore, params, message) -> None:
    with pytest.raises(InvalidSearch, match=message.replace("(", r"\(").replace(".", r"\.")):
        store.search("Observation", params)


def test_bad_resource_type_in_search(store: SqliteFhirStore) -> None:
    with pytest.raises(InvalidSearch, match="not a FHIR resource type"):
        store.search("observation", {})


def test_search_of_a_type_never_written_is_empty(store: SqliteFhirStore) -> None:
    assert store.search("Goal", {"lifecycle-status": "active", "_sort": "-_lastUpdated"}).total == 0
    assert store.search("Basic", {"identifier": "x"}).total == 0


def test_a_wide_period_written_later_is_still_found_by_window_searches(store: SqliteFhirStore) -> None:
    store.update(observation("point", effectiveDateTime="2024-01-10T00:00:00Z"))
    wide = observation("wide", effectivePeriod={"start": "2024-01-01T00:00:00Z", "end": "2024-12-31T00:00:00Z"})
    with pytest.raises(InvalidSearch):  # a rolled-back write must not count as known width
        store.transaction({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": wide, "request": {"method": "PUT", "url": "Observation/wide"}},
            {"request": {"method": "GET", "url": "Observation?colour=red"}}]})
    store.update(wide)

    for params in ({"date": "lt2024-02-01"}, {"date": "lt2024-02-01", "subject": "Patient/p1"},
                   {"date": "le2024-01-15", "patient": "p1"}):
        assert ids(store, **params) == ["point", "wide"]
    assert ids(store, date="eb2024-02-01", subject="Patient/p1") == ["point"]


def test_the_primary_date_takes_one_value(store: SqliteFhirStore) -> None:
    with pytest.raises(InvalidResource, match="effectiveDateTime or effectivePeriod or effectiveInstant may hold"):
        store.update(observation("two", effectiveDateTime="2024-01-01T00:00:00Z",
                                 effectivePeriod={"start": "2024-02-01T00:00:00Z"}))
