"""`check_templates`: load errors, warnings about the known MedTech sample mistakes, dry runs."""

from __future__ import annotations

import json

from ingest.templates import check_templates

from .conftest import SAMPLES, compat_input

LOINC = "http://loinc.org"


def fhir_file(*templates) -> dict:
    return {"templateType": "CollectionFhir",
            "template": [{"templateType": "CodeValueFhir", "template": t} for t in templates]}


def device_file(*type_names: str) -> dict:
    return {"templateType": "CollectionContent", "template": [
        {"templateType": "JsonPathContent", "template": {
            "typeName": t, "typeMatchExpression": f"$..[?(@{t})]", "deviceIdExpression": "$.device",
            "timestampExpression": "$.time", "values": [{"valueName": t, "valueExpression": f"$.{t}"}]}}
        for t in type_names]}


def codes(report) -> set[tuple]:
    return {(w.code, w.index, w.field) for w in report.warnings}


def test_basic_sample_diastolic_coded_as_heart_rate_is_flagged(compat_dir) -> None:
    report = check_templates(SAMPLES / "basic__devicecontent.json", SAMPLES / "basic__fhirmapping.json")
    assert report.ok
    warning = next(w for w in report.warnings if w.code == "bp_component_heart_rate")
    assert (warning.index, warning.type_name, warning.field) == (3, "bloodpressure", "components[0].codes")
    assert "8867-4" in warning.message and "8462-4" in warning.message
    assert ("sampled_data_size", 0, "value.defaultPeriod") in codes(report)  # 1000 ms in an hour: 3600 slots
    # deviceWorn / deviceRemoved have FHIR templates; hrv has one too: no missing types.
    assert not [w for w in report.warnings if w.code == "no_fhir_template"]


def test_quantity_with_a_period_interval_is_flagged(compat_dir) -> None:
    report = check_templates(None, compat_input("data_CodeValueFhirTemplate_Quantity.json"))
    flagged = [w for w in report.warnings if w.code == "single_value_period_interval"]
    assert len(flagged) == 2 and all("periodInterval 60" in w.message for w in flagged)


def test_units_that_do_not_fit_the_code() -> None:
    report = check_templates(None, fhir_file(
        {"typeName": "hr", "codes": [{"code": "8867-4", "system": LOINC}],
         "value": {"valueName": "hr", "valueType": "Quantity", "unit": "mmHg"}},
        {"typeName": "glucose", "codes": [{"code": "41653-7", "system": LOINC}],
         "value": {"valueName": "g", "valueType": "Quantity", "unit": "mmol/L", "system": "http://unitsofmeasure.org",
                   "code": "mmol/L"}},
        {"typeName": "weight", "codes": [{"code": "29463-7", "system": LOINC}],
         "value": {"valueName": "w", "valueType": "Quantity", "unit": "kg"}},
        {"typeName": "temp", "codes": [{"code": "8310-5", "system": LOINC}],
         "value": {"valueName": "t", "valueType": "SampledData", "defaultPeriod": 60000, "unit": ""}},
        {"typeName": "ok", "codes": [{"code": "8867-4", "system": LOINC}],
         "value": {"valueName": "hr", "valueType": "Quantity", "unit": "beats/minute",
                   "system": "http://unitsofmeasure.org", "code": "/min"}},
    ))
    by_template = {(w.type_name, w.code) for w in report.warnings}
    assert ("hr", "unit_mismatch") in by_template
    assert ("glucose", "unit_not_canonical") in by_template  # convertible, but rules compare in mg/dL
    assert ("weight", "unit_not_ucum") in by_template  # no system/code: not the vital-signs profile
    assert ("temp", "unit_missing") in by_template
    assert not [w for w in report.warnings if w.type_name == "ok"]


def test_device_types_without_fhir_template_and_unused_templates() -> None:
    report = check_templates(device_file("hr", "steps"), fhir_file(
        {"typeName": "hr", "codes": [], "value": {"valueName": "hr", "valueType": "String"}},
        {"typeName": "weight", "codes": [], "value": {"valueName": "w", "valueType": "String"}}))
    found = {(w.code, w.type_name) for w in report.warnings}
    assert ("no_fhir_template", "steps") in found
    assert ("fhir_template_unused", "weight") in found
    assert ("no_fhir_template", "hr") not in found


def test_unknown_fields_get_a_suggestion(compat_dir) -> None:
    report = check_templates(compat_input("data_CalculatedFunctionContentTemplateValidInvalidAndMissingMembers.json"),
                             None)
    assert not report.ok  # the real fields are missing
    device = device_file("hr")
    device["template"][0]["template"]["timestampExpresion"] = "$.t"
    device["template"][0]["template"]["values"][0]["requried"] = True
    report = check_templates(device, None)
    warnings = {w.field: w.message for w in report.warnings if w.code == "unknown_field"}
    assert "did you mean 'timestampExpression'?" in warnings["timestampExpresion"]
    assert "did you mean 'required'?" in warnings["values[0].requried"]


def test_load_errors_are_reported_not_raised(compat_dir) -> None:
    report = check_templates(compat_input("data_CollectionContentTemplateInvalid.json"),
                             compat_input("data_CollectionFhirTemplateInvalid.json"), [{"x": 1}])
    assert not report.ok
    files = {e.file for e in report.errors}
    assert len(files) == 2
    assert report.messages == []  # no device templates: nothing to dry-run


def test_dry_run_shows_measurements_observations_and_dead_letters(compat_dir) -> None:
    messages = [
        {"heartrate": 65, "deviceid": "device1", "patientid": "patient1",
         "measurementdatetime": "2023-10-09T19:18:23+00:00"},
        json.dumps({"steps": 10, "deviceid": "device1", "patientid": "patient1",
                    "measurementdatetime": "2023-10-09T19:18:23+00:00"}),
        {"unrelated": True},
        b"{broken",
    ]
    report = check_templates(SAMPLES / "basic__devicecontent.json", SAMPLES / "basic__fhirmapping.json", messages)
    assert [len(m.measurements) for m in report.messages] == [1, 1, 0, 0]
    assert [len(m.observations) for m in report.messages] == [1, 1, 0, 0]
    assert [[e.reason for e in m.errors] for m in report.messages] == [
        [], [], ["no_template_matched"], ["invalid_json"]]
    assert not any(m.notes for m in report.messages)  # every Observation is valid R4
    text = report.to_text()
    assert "message 3: 0 measurement(s), 0 Observation(s) — DEAD LETTER" in text
    assert "dead letter [invalid_json]" in text
    assert "3600 slots, readings at 1103:65" in text  # SampledData abbreviated
    data = json.loads(json.dumps(report.to_dict()))
    assert data["messages"][0]["measurements"][0]["Type"] == "heartrate"
    assert data["messages"][2]["deadLetter"][0]["reason"] == "no_template_matched"


def test_dry_run_reports_healthkit_sample_blood_pressure_defect(compat_dir) -> None:
    message = {"uuid": "u", "startDate": "2024-05-01T08:00:00Z", "endDate": "2024-05-01T08:00:00Z",
               "systolic": 120.0, "diastolic": 80.0, "deviceId": "iphone"}
    report = check_templates(SAMPLES / "healthkitOnFhir__devicecontent.json",
                             SAMPLES / "healthkitOnFhir__fhirmapping.json", [message])
    (result,) = report.messages
    (error,) = result.errors
    assert (error.reason, error.expression) == ("missing_required_value", "$.measurementdatetime")


HOURLY_HR = {"typeName": "heartrate", "periodInterval": 60, "codes": [{"code": "8867-4", "system": LOINC}],
             "value": {"defaultPeriod": 60000, "unit": "count/min", "valueName": "hr", "valueType": "SampledData"}}
README_MESSAGES = [  # the iomt-fhir README's test message, twice in one hour
    {
        "heartrate": 65,
        "deviceid": "device1",
        "patientid": "patient1",
        "measurementdatetime": "2023-10-09T19:18:23+00:00",
    },
    {
        "heartrate": 70,
        "deviceid": "device1",
        "patientid": "patient1",
        "measurementdatetime": "2023-10-09T19:20:05+00:00",
    },
]


def test_merge_takes_the_messages_as_one_delivery_into_one_hourly_observation(compat_dir) -> None:
    device = SAMPLES / "basic__devicecontent.json"
    separate = check_templates(device, fhir_file(HOURLY_HR), README_MESSAGES)
    assert separate.batch is None
    assert [len(m.observations) for m in separate.messages] == [1, 1]  # one reading each

    merged = check_templates(device, fhir_file(HOURLY_HR), README_MESSAGES, merge=True)
    assert [len(m.measurements) for m in merged.messages] == [1, 1]
    (obs,) = merged.batch
    assert obs["id"] == separate.messages[0].observations[0]["id"]
    tokens = obs["valueSampledData"]["data"].split()
    assert len(tokens) == 60 and tokens[18] == "65" and tokens[20] == "70"  # as the documented Observation
    assert obs["effectivePeriod"] == {"start": "2023-10-09T19:00:00Z", "end": "2023-10-09T19:59:59.9999999Z"}
    assert "batch: the 2 message(s) as one delivery: 1 Observation(s)" in merged.to_text()
    assert merged.to_dict()["batchObservations"] == [obs]


def test_merge_keeps_each_messages_dead_letter() -> None:
    templates = device_file("hr")
    quantity = {"typeName": "hr", "periodInterval": 60, "codes": [{"code": "8867-4", "system": LOINC}],
                "value": {"valueName": "hr", "valueType": "Quantity", "unit": "/min",
                          "system": "http://unitsofmeasure.org", "code": "/min"}}
    messages = [{"hr": 60, "device": "d", "time": "2024-05-01T10:00:00Z"},
                {"hr": 61, "device": "d", "time": "2024-05-01T10:05:00Z"},
                {"nothing": 1}]
    report = check_templates(templates, fhir_file(quantity), messages, merge=True)
    assert [[e.reason for e in m.errors] for m in report.messages] == [[], [], ["no_template_matched"]]
    # Two Quantity readings in one hourly window cannot share a group (one value per Observation):
    # as the ingest handler does, each message is then mapped on its own, the later replacing.
    (obs,) = report.batch
    assert obs["valueQuantity"]["value"] == 61
    # One reading that cannot be mapped at all is its own message's dead letter.
    bad = check_templates(templates, fhir_file(quantity), [messages[0], {"hr": "fast", "device": "d",
                                                                         "time": "2024-05-01T10:07:00Z"}], merge=True)
    assert [[e.reason for e in m.errors] for m in bad.messages] == [[], ["incompatible_value"]]


def test_a_reading_dated_in_the_future_is_the_dry_runs_dead_letter_as_in_the_pipeline() -> None:
    """The ingest handler dead-letters a reading dated past the clock skew (future_reading); the
    dry run must say so too, and leave it out of the merged batch, or it shows Observations the
    pipeline never writes."""
    from datetime import UTC, datetime, timedelta

    templates = device_file("hr")
    quantity = {"typeName": "hr", "codes": [{"code": "8867-4", "system": LOINC}],
                "value": {"valueName": "hr", "valueType": "Quantity", "unit": "/min",
                          "system": "http://unitsofmeasure.org", "code": "/min"}}
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    messages = [{"hr": 60, "device": "d", "time": "2026-11-20T11:00:00Z"},
                {"hr": 61, "device": "d", "time": "2027-11-20T11:00:00.1234567Z"}]  # a year ahead, 100 ns
    report = check_templates(templates, fhir_file(quantity), messages, merge=True, now=now,
                             max_future_skew=timedelta(minutes=15))
    assert [[e.reason for e in m.errors] for m in report.messages] == [[], ["future_reading"]]
    assert [o["valueQuantity"]["value"] for o in report.batch] == [60]
    # Within the skew it is an ordinary reading.
    near = check_templates(templates, fhir_file(quantity), [{"hr": 62, "device": "d", "time": "2026-11-20T12:10:00Z"}],
                           now=now, max_future_skew=timedelta(minutes=15))
    assert not near.messages[0].errors
