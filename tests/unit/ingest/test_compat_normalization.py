"""The iomt-fhir payload examples normalize to the measurements MedTech's tests and docs state.

Expectations are those of microsoft/iomt-fhir's own unit tests (NormalizationTests,
IotJsonPathContentTemplateTests, IotCentralJsonPathContentTemplateTests,
CalculatedFunctionContentTemplateTests) and the iomt-fhir README, https://github.com/microsoft/iomt-fhir.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ingest.templates import load_device_templates
from ingest.templates.instant import parse_iso

from .conftest import INGESTED, SAMPLES, compat_input, load_json


def props(m):
    return [(p.name, p.value) for p in m.properties]


def at(text: str) -> datetime:
    return parse_iso(text).astimezone(UTC)


@pytest.fixture(autouse=True)
def _need_compat(compat_dir):
    return compat_dir


def test_iot_hub_payload_reads_device_and_creation_time_from_the_envelope() -> None:
    templates = load_device_templates(compat_input("data_IotJsonPathContentTemplateValid.json"))
    envelope = load_json(compat_input("data_IotHubPayloadExample.json"))
    result = templates.normalize_envelope(envelope, ingested_at=INGESTED)
    assert result.ok
    (m,) = result.measurements
    assert m.type == "heartrate"
    assert m.device_id == "ev-d795-1d04-55ae"
    # iothub-creation-time-utc, to the 100-ns tick as MedTech's DateTime keeps it.
    assert m.occurrence_time == at("2019-01-30T22:45:02.6073744+00:00")
    assert m.occurrence_time != at("2019-01-30T22:45:02.607374+00:00")
    assert m.to_dict()["OccurrenceTimeUtc"] == "2019-01-30T22:45:02.6073744Z"
    assert props(m) == [("hr", "203")]
    assert m.ingestion_time == INGESTED


def test_iot_hub_payload_without_creation_time_falls_back_to_enqueued_time() -> None:
    templates = load_device_templates(compat_input("data_IotJsonPathContentTemplateValid.json"))
    envelope = load_json(compat_input("data_IotHubPayloadExampleMissingCreateTime.json"))
    (m,) = templates.normalize_envelope(envelope).measurements
    assert m.occurrence_time == at("2019-02-01T22:46:01.875+00:00")  # iothub-enqueuedtime


def test_iot_hub_properties_passed_by_the_transport_form_the_envelope() -> None:
    """In production the transport gives Body and properties separately; `normalize` wraps them."""
    templates = load_device_templates(compat_input("data_IotJsonPathContentTemplateValid.json"))
    envelope = load_json(compat_input("data_IotHubPayloadMultiValueExample.json"))
    body = {"heartrate": "88"}
    result = templates.normalize(body, properties=envelope["Properties"],
                                 system_properties=envelope["SystemProperties"])
    (m,) = result.measurements
    assert (m.device_id, props(m)) == ("ev-d795-1d04-55ae", [("hr", "88")])


def test_iot_hub_multi_value_payload() -> None:
    templates = load_device_templates({
        "templateType": "IotJsonPathContent",
        "template": {"typeName": "bloodpressure", "typeMatchExpression": "$..[?(@Body.systolic && @Body.diastolic)]",
                     "values": [{"valueName": "systolic", "valueExpression": "$.Body.systolic", "required": True},
                                {"valueName": "diastolic", "valueExpression": "$.Body.diastolic", "required": True}]},
    })
    envelope = load_json(compat_input("data_IotHubPayloadMultiValueExample.json"))
    (m,) = templates.normalize_envelope(envelope).measurements
    assert props(m) == [("systolic", "111"), ("diastolic", "75")]


@pytest.mark.parametrize(
    ("type_match", "values", "expected"),
    [
        ("$..[?(@telemetry.BloodPressure.Diastolic && @telemetry.BloodPressure.Systolic)]",
         [("bp_diastolic", "$.telemetry.BloodPressure.Diastolic"), ("bp_systolic", "$.telemetry.BloodPressure.Systolic")],
         [("bp_diastolic", "7"), ("bp_systolic", "71")]),
        ("$..[?(@enrichments.Elevation)]", [("elevation", "$.enrichments.Elevation")], [("elevation", "200m")]),
        ("$..[?(@telemetry)]",
         [("activity", "$.telemetry.Activity"), ("bp_diastolic", "$.telemetry.BloodPressure.Diastolic"),
          ("bp_systolic", "$.telemetry.BloodPressure.Systolic"), ("respitoryrate", "$.telemetry.RespiratoryRate")],
         [("activity", "running"), ("bp_diastolic", "7"), ("bp_systolic", "71"), ("respitoryrate", "13")]),
    ],
)
def test_iot_central_export(type_match, values, expected) -> None:
    templates = load_device_templates({"templateType": "IotCentralJsonPathContent", "template": {
        "typeName": "t", "typeMatchExpression": type_match,
        "values": [{"valueName": n, "valueExpression": e, "required": True} for n, e in values]}})
    payload = load_json(compat_input("data_IotCentralPayloadExample.json"))
    # Wrapped as the transport delivers it (Body = the export) and unwrapped as MedTech's tests do.
    for result in (templates.normalize(payload), templates.normalize_envelope(payload)):
        (m,) = result.measurements
        assert m.device_id == "1vzb5ghlsg1"
        assert m.occurrence_time == at("2020-08-05T22:26:55.455+00:00")
        assert props(m) == expected


def test_iot_central_batch_of_three_exports_gives_six_measurements() -> None:
    templates = load_device_templates(compat_input("data_CollectionContentTemplateMultipleIotCentralJsonPath.json"))
    payload = load_json(compat_input("data_IotCentralPayloadExampleMultipleMessages.json"))
    result = templates.normalize_envelope(payload)
    assert result.ok
    ms = result.measurements
    assert len(ms) == 6
    by_type = {t: [m for m in ms if m.type == t] for t in ("heartrate", "bloodpressure", "respiratoryrate")}
    assert all(len(v) == 2 for v in by_type.values())
    assert props(by_type["heartrate"][0]) == [("hr", "75")]
    assert props(by_type["bloodpressure"][0]) == [("systolic", "62"), ("diastolic", "30")]
    assert props(by_type["respiratoryrate"][0]) == [("respiratoryrate", "15")]
    # patientIdExpression "$.deviceId": relative to the matched export.
    assert {m.patient_id for m in ms} == {"1qsi9p8t5l2"}


@pytest.mark.parametrize("name", ["data_CollectionContentTemplateHrAndSteps.json",
                                  "data_CollectionContentTemplateHrAndStepsJmesPath.json"])
def test_hr_and_steps_one_message_many_measurements(name) -> None:
    templates = load_device_templates(compat_input(name))
    token = {"heartrate": "60", "steps": "2", "device": "abc", "date": "2024-05-01T10:00:00Z"}
    ms = templates.normalize_envelope(token).measurements
    assert [(m.type, m.device_id, props(m)) for m in ms] == [
        ("heartrate", "abc", [("hr", "60")]), ("steps", "abc", [("steps", "2")])]
    only_hrv = templates.normalize_envelope({"hrv": "5", "device": "abc", "date": "2024-05-01T10:00:00Z"})
    assert not only_hrv.measurements
    assert only_hrv.reason == "no_template_matched"  # MedTech returned an empty list here


def test_blood_pressure_array_fans_out_with_matched_token() -> None:
    """the iomt-fhir README, https://github.com/microsoft/iomt-fhir: one message -> two blood-pressure measurements, matchedToken mixing."""
    templates = load_device_templates({"templateType": "CollectionContent", "template": [{
        "templateType": "CalculatedContent",
        "template": {"typeName": "bloodPressure", "typeMatchExpression": "$..[?(@systolic && @diastolic)]",
                     "deviceIdExpression": "$.Body.deviceId", "timestampExpression": "$.matchedToken.date",
                     "values": [{"required": "true", "valueExpression": "$.matchedToken.systolic", "valueName": "systolic"},
                                {"required": "true", "valueExpression": "$.matchedToken.diastolic", "valueName": "diastolic"}]}}]})
    body = {"deviceId": "device123", "data": [
        {"systolic": "120", "diastolic": "80", "date": "2021-07-13T17:29:01.061144Z"},
        {"systolic": "122", "diastolic": "82", "date": "2021-07-13T17:28:01.061122Z"}]}
    ms = templates.normalize(body).measurements
    assert [(m.device_id, m.occurrence_time, props(m)) for m in ms] == [
        ("device123", at("2021-07-13T17:29:01.061144+00:00"), [("systolic", "120"), ("diastolic", "80")]),
        ("device123", at("2021-07-13T17:28:01.061122+00:00"), [("systolic", "122"), ("diastolic", "82")]),
    ]


def test_jmespath_projection_over_body_array() -> None:
    """CalculatedFunctionContentTemplateTests: `Body[?systolic]` with matchedToken expressions."""
    templates = load_device_templates({"templateType": "CalculatedContent", "template": {
        "defaultExpressionLanguage": "JmesPath", "typeName": "bloodpressure",
        "typeMatchExpression": "Body[?systolic]", "deviceIdExpression": "matchedToken.device",
        "timestampExpression": "matchedToken.date",
        "values": [{"valueName": "systolic", "valueExpression": "matchedToken.systolic", "required": True},
                   {"valueName": "diastolic", "valueExpression": "matchedToken.diastolic", "required": True}]}})
    body = [{"systolic": "120", "diastolic": "80", "device": "abc", "date": "2024-05-01T10:00:00Z"},
            {"systolic": "122", "diastolic": "82", "device": "abc", "date": "2024-05-01T09:59:00Z"}]
    ms = templates.normalize(body).measurements
    assert [props(m) for m in ms] == [[("systolic", "120"), ("diastolic", "80")], [("systolic", "122"), ("diastolic", "82")]]
    missing = templates.normalize([{"systolic": "120", "device": "abc", "date": "2024-05-01T10:00:00Z"}])
    assert missing.reason == "missing_required_value"
    assert "'diastolic' (matchedToken.diastolic)" in missing.detail


def test_property_names_with_spaces() -> None:
    templates = load_device_templates({"templateType": "CalculatedContent", "template": {
        "typeName": "space", "typeMatchExpression": "$..[?(@['My Property'])]",
        "deviceIdExpression": "$.['My Property']", "timestampExpression": "$.Time",
        "values": [{"valueName": "prop", "valueExpression": "$.['My Property']"}]}})
    (m,) = templates.normalize_envelope({"My Property": "data", "Time": "2024-05-01T10:00:00Z"}).measurements
    assert (m.device_id, props(m)) == ("data", [("prop", "data")])


def test_basic_sample_with_the_readme_test_messages() -> None:
    """iomt-fhir README: heartrate / steps / blood pressure messages against the basic sample."""
    templates = load_device_templates(SAMPLES / "basic__devicecontent.json")
    base = {"deviceid": "device1", "patientid": "patient1", "measurementdatetime": "2023-10-09T19:18:23+00:00"}
    cases = [({"heartrate": 65}, "heartrate", [("hr", "65")]),
             ({"steps": 10}, "steps", [("steps", "10")]),
             ({"systolic": 120, "diastolic": 80}, "bloodpressure", [("systolic", "120"), ("diastolic", "80")])]
    for fields, type_name, expected in cases:
        (m,) = templates.normalize({**fields, **base}).measurements
        assert (m.type, m.device_id, m.patient_id, props(m)) == (type_name, "device1", "patient1", expected)
        assert m.occurrence_time == at("2023-10-09T19:18:23+00:00")


def test_healthkit_sample_blood_pressure_defect_is_a_dead_letter_not_a_silent_drop() -> None:
    """The sample reads $.measurementdatetime, which the HealthKit app never sends."""
    templates = load_device_templates(SAMPLES / "healthkitOnFhir__devicecontent.json")
    message = {"uuid": "u1", "startDate": "2024-05-01T08:00:00Z", "endDate": "2024-05-01T08:00:00Z",
               "systolic": 120.0, "diastolic": 80.0, "deviceId": "iphone"}
    result = templates.normalize(message)
    assert result.reason == "missing_required_value"
    (error,) = result.errors
    assert error.type_name == "bloodpressure" and error.field == "timestampExpression"
    assert error.expression == "$.measurementdatetime"


@pytest.mark.parametrize(
    ("name", "type_name", "values"),
    [
        ("mapping-generator__deviceData_BloodPressure.json", "Blood Pressure", [("diastolic", "79"), ("systolic", "119")]),
        ("mapping-generator__deviceData_HeartRate.json", "Heart Rate", [("beatsPerMinute", "66")]),
        ("mapping-generator__deviceData_OxygenSaturation.json", "Oxygen Saturation", [("oxygenPercentage", "99")]),
    ],
)
def test_mapping_generator_payloads_with_encounter_and_correlation(name, type_name, values) -> None:
    """The mapping generator's shape: type discriminator, every id, values as an object."""
    templates = load_device_templates({"templateType": "CollectionContent", "template": [
        {"templateType": "CalculatedContent", "template": {
            "typeName": t, "defaultExpressionLanguage": "JmesPath",
            "typeMatchExpression": f"to_array(Body)[?type == '{t}']",
            "deviceIdExpression": "matchedToken.device", "patientIdExpression": "matchedToken.patient",
            "encounterIdExpression": "matchedToken.encounter", "correlationIdExpression": "matchedToken.correlation",
            "timestampExpression": "matchedToken.time",
            "values": [{"valueName": n, "valueExpression": f"matchedToken.values.{n}", "required": True} for n in names]}}
        for t, names in (("Blood Pressure", ["diastolic", "systolic"]), ("Heart Rate", ["beatsPerMinute"]),
                         ("Oxygen Saturation", ["oxygenPercentage"]))]})
    payload = load_json(compat_input(name.split("__", 1)[1]))
    (m,) = templates.normalize(payload).measurements
    assert (m.type, m.device_id, m.patient_id, m.encounter_id, m.correlation_id) == (
        type_name, "TestDeviceId", "TestPatientId", "TestEncounter", "TestCorrelation")
    assert props(m) == values


def test_projection_payload_gives_one_measurement_per_template() -> None:
    templates = load_device_templates({"templateType": "CollectionContent", "template": [
        {"templateType": "JsonPathContent", "template": {
            "typeName": t, "typeMatchExpression": f"$..[?(@{field})]", "deviceIdExpression": "$.device",
            "timestampExpression": "$.time", "values": [{"valueName": field, "valueExpression": f"$.{field}"}]}}
        for t, field in (("heartrate", "heartRate"), ("spo2", "oxygenSaturation"), ("bp", "systolic"))]})
    payload = load_json(compat_input("deviceData_Projection.json"))
    ms = templates.normalize(payload).measurements
    assert [(m.type, props(m)) for m in ms] == [
        ("heartrate", [("heartRate", "66")]), ("spo2", [("oxygenSaturation", "99")]), ("bp", [("systolic", "119")])]
