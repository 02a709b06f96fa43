"""FHIR templates -> Observations: MedTech's identifiers and ids, values, grouping and merges."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from fhir.resources.R4B.observation import Observation

from common.jsonnum import dumps
from ingest.templates import (
    SERVICE_SYSTEM,
    Measurement,
    MeasurementProperty,
    TemplateError,
    group_measurements,
    load_fhir_templates,
)
from ingest.templates.errors import MappingFailure

T0 = datetime(2023, 10, 9, 19, 18, 23, tzinfo=UTC)
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
LOINC = "http://loinc.org"


def measurement(type_="heartrate", at=T0, ingested=NOW, device="device1", patient="patient1", correlation=None,
                **values) -> Measurement:
    props = tuple(MeasurementProperty(k, str(v[0]) if isinstance(v, tuple) else str(v),
                                      v[1] if isinstance(v, tuple) else None) for k, v in values.items())
    return Measurement(type=type_, occurrence_time=at, device_id=device, patient_id=patient,
                       correlation_id=correlation, properties=props, ingestion_time=ingested)


def fhir(*templates) -> object:
    return load_fhir_templates({"templateType": "CollectionFhir", "template": [
        {"templateType": "CodeValueFhir", "template": t} for t in templates]})


HR_SAMPLED = {"typeName": "heartrate", "periodInterval": 60,
              "codes": [{"code": "8867-4", "system": LOINC, "display": "Heart rate"}],
              "value": {"defaultPeriod": 60000, "unit": "count/min", "valueName": "hr", "valueType": "SampledData"}}
HR_QUANTITY = {"typeName": "heartrate", "periodInterval": 0,
               "codes": [{"code": "8867-4", "system": LOINC, "display": "Heart rate"}],
               "value": {"valueName": "hr", "valueType": "Quantity", "unit": "beats/minute",
                         "system": "http://unitsofmeasure.org", "code": "/min"}}


def changes(templates, measurements, existing=None, now=NOW, patient="p-1", device="d-1"):
    store = existing if existing is not None else {}
    out = []
    for group in group_measurements(measurements):
        out += templates.observations(group, patient_id=patient, device_id=device, existing=store.get, now=now)
    return out


def test_identifier_and_id_follow_medtech_exactly() -> None:
    """FhirImportServiceTests: patientId.deviceId.heartrate.20190101000000Z.20190101005959Z;
    id = sha256("{system}_{value}")."""
    templates = fhir(HR_SAMPLED)
    (change,) = changes(templates, [measurement(at=datetime(2019, 1, 1, 0, 30, tzinfo=UTC), hr=60)],
                        patient="patientId", device="deviceId")
    value = "patientId.deviceId.heartrate.20190101000000Z.20190101005959Z"
    assert change.identifier == (SERVICE_SYSTEM, value)
    assert change.id == hashlib.sha256(f"{SERVICE_SYSTEM}_{value}".encode()).hexdigest()
    assert change.resource["id"] == change.id
    assert change.resource["identifier"] == [{"system": SERVICE_SYSTEM, "value": value}]
    assert change.identifier_query == f"identifier={SERVICE_SYSTEM}|{value}"


def test_hourly_sampled_data_matches_the_documented_observation() -> None:
    """the iomt-fhir README, https://github.com/microsoft/iomt-fhir: 65 @19:18:23Z and 70 @19:20:05Z, defaultPeriod 60000."""
    templates = fhir(HR_SAMPLED)
    (change,) = changes(templates, [measurement(hr=65), measurement(at=T0.replace(minute=20, second=5), hr=70)])
    obs = change.resource
    assert change.action == "create"
    assert obs["status"] == "final"
    assert obs["code"] == {"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"},
                                      {"system": SERVICE_SYSTEM, "code": "heartrate", "display": "heartrate"}],
                           "text": "heartrate"}
    assert obs["effectivePeriod"] == {"start": "2023-10-09T19:00:00Z", "end": "2023-10-09T19:59:59.9999999Z"}
    assert obs["subject"] == {"reference": "Patient/p-1"} and obs["device"] == {"reference": "Device/d-1"}
    assert obs["valueSampledData"] == {
        "origin": {"value": 0, "unit": "count/min"}, "period": 60000, "dimensions": 1,
        "data": " ".join(["E"] * 18 + ["65", "E", "70"] + ["E"] * 39)}
    assert obs["identifier"][0]["value"].endswith(".heartrate.20231009190000Z.20231009195959Z")
    Observation.model_validate(obs)


def test_daily_window_is_a_utc_day() -> None:
    templates = fhir({**HR_SAMPLED, "periodInterval": 1440,
                      "value": {**HR_SAMPLED["value"], "defaultPeriod": 3600000}})
    (change,) = changes(templates, [measurement(hr=60)])
    assert change.resource["effectivePeriod"] == {"start": "2023-10-09T00:00:00Z", "end": "2023-10-09T23:59:59.9999999Z"}
    assert change.resource["valueSampledData"]["data"].split()[19] == "60"


def test_single_quantity_observation_per_reading() -> None:
    templates = fhir(HR_QUANTITY)
    result = changes(templates, [measurement(hr=65), measurement(at=T0 + timedelta(minutes=1), hr=70)])
    assert [c.resource["valueQuantity"] for c in result] == [
        {"value": 65, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"},
        {"value": 70, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}]
    assert result[0].resource["effectivePeriod"] == {"start": "2023-10-09T19:18:23Z", "end": "2023-10-09T19:18:23Z"}
    assert result[0].identifier[1].endswith("heartrate.20231009191823Z.20231009191823Z")


def test_quantity_with_two_readings_in_one_window_is_incompatible() -> None:
    templates = fhir({**HR_QUANTITY, "periodInterval": 60})
    with pytest.raises(MappingFailure) as info:
        changes(templates, [measurement(hr=65), measurement(at=T0 + timedelta(minutes=1), hr=70)])
    assert info.value.reason == "incompatible_value"
    assert "expects 1 value per Observation, received 2" in info.value.detail


def test_non_numeric_quantity_is_incompatible() -> None:
    with pytest.raises(MappingFailure) as info:
        changes(fhir(HR_QUANTITY), [measurement(hr="fast")])
    assert info.value.reason == "incompatible_value"


WEIGHT_QUANTITY = {"typeName": "weight", "periodInterval": 0, "codes": [{"code": "29463-7", "system": LOINC}],
                   "value": {"valueName": "w", "valueType": "Quantity", "unit": "kg",
                             "system": "http://unitsofmeasure.org", "code": "kg"}}


@pytest.mark.parametrize(("text", "written"), [("22.40", "22.40"), ("0.010", "0.010"), (" +.50", "0.50"),
                                               ("007.10", "7.10"), ("120", "120"), ("120.", "120")])
def test_quantity_keeps_the_digits_it_was_written_with(text, written) -> None:
    """FHIR decimals keep their precision; MedTech's decimal.Parse keeps the scale (22.40)."""
    (change,) = changes(fhir(WEIGHT_QUANTITY), [measurement("weight", w=text)])
    value = change.resource["valueQuantity"]["value"]
    assert dumps(value) == written
    assert f'"value":{written},' in dumps(change.resource, separators=(",", ":"))
    assert value == float(text)  # and it computes as the number it is


@pytest.mark.parametrize(("text", "why"), [("1e3", "exponent"), ("2.5E-1", "exponent"), ("1,5", "comma"),
                                           ("1_000", "not a number"), ("NaN", "not a number"),
                                           ("Infinity", "not a number")])
def test_quantity_refuses_what_medtech_decimal_parse_refuses(text, why) -> None:
    """MedTech: decimal.Parse(value, InvariantCulture) takes no exponent; Vigil also refuses
    thousands separators (a decimal comma would silently become a different number)."""
    with pytest.raises(MappingFailure) as info:
        changes(fhir(WEIGHT_QUANTITY), [measurement("weight", w=text)])
    assert info.value.reason == "incompatible_value"
    assert why in info.value.detail


def test_json_numbers_keep_their_digits_and_exponents_read_as_medtech_reads_them() -> None:
    from ingest.templates import load_device_templates

    devices = load_device_templates({"templateType": "CalculatedContent", "template": {
        "typeName": "weight", "typeMatchExpression": "$..[?(@w)]", "deviceIdExpression": "$.matchedToken.d",
        "timestampExpression": "$.matchedToken.t",
        "values": [{"valueName": "w", "valueExpression": "$.matchedToken.w", "required": True}]}})
    message = b'[{"d": "s", "t": "2024-05-01T10:00:00Z", "w": 72.40}, {"d": "s", "t": "2024-05-01T11:00:00Z", "w": 1e3}]'
    ms = devices.normalize(message).measurements
    # MedTech's JToken reads 1e3 as the double 1000; 72.40 keeps its digits (FHIR decimal precision).
    assert [m.value("w") for m in ms] == ["72.40", "1000"]
    assert [dumps(c.resource["valueQuantity"]["value"]) for c in changes(fhir(WEIGHT_QUANTITY), ms)] == [
        "72.40", "1000"]


def test_string_and_codeable_concept_values() -> None:
    templates = fhir(
        {"typeName": "alarmEvent", "periodInterval": 0,
         "codes": [{"code": "deviceEvent", "system": "https://www.contoso.com/events/v1", "display": "Device Event"}],
         "value": {"text": "Alarm!", "valueName": "alarm", "valueType": "CodeableConcept",
                   "codes": [{"code": "alarmEvent", "system": "https://www.contoso.com/events/v1"}]},
         "components": [{"codes": [{"code": "reasonText", "system": "https://www.contoso.com/events/v1"}],
                         "value": {"valueName": "reason", "valueType": "String"}}]})
    (change,) = changes(templates, [measurement("alarmEvent", alarm="ignored", reason="battery low")])
    obs = change.resource
    assert obs["valueCodeableConcept"] == {
        "coding": [{"system": "https://www.contoso.com/events/v1", "code": "alarmEvent"}], "text": "Alarm!"}
    assert obs["component"][0]["valueString"] == "battery low"
    assert obs["component"][0]["code"]["coding"][-1] == {"system": SERVICE_SYSTEM, "code": "reason", "display": "reason"}
    assert "category" not in obs  # not a vital sign and the template is silent
    Observation.model_validate(obs)


def test_vital_sign_category_is_added_when_the_template_is_silent() -> None:
    (change,) = changes(fhir(HR_QUANTITY), [measurement(hr=60)])
    assert change.resource["category"] == [{"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs",
        "display": "Vital Signs"}], "text": "Vital Signs"}]
    explicit = {**HR_QUANTITY, "category": [{"text": "Mine", "codes": [{"code": "x", "system": "urn:x"}]}]}
    (change,) = changes(fhir(explicit), [measurement(hr=60)])
    assert change.resource["category"] == [{"coding": [{"system": "urn:x", "code": "x"}], "text": "Mine"}]


def test_correlation_id_grouping() -> None:
    templates = fhir({**HR_SAMPLED, "periodInterval": -1, "value": {**HR_SAMPLED["value"], "defaultPeriod": 1000}})
    ms = [measurement(hr=60, correlation="session-9"), measurement(at=T0 + timedelta(seconds=3), hr=62,
                                                                    correlation="session-9")]
    (change,) = changes(templates, ms)
    assert change.identifier[1] == "p-1.d-1.heartrate.session-9"
    assert change.resource["effectivePeriod"] == {"start": "2023-10-09T19:18:23Z", "end": "2023-10-09T19:18:26Z"}
    assert change.resource["valueSampledData"]["data"] == "60 E E 62"
    with pytest.raises(MappingFailure) as info:
        changes(templates, [measurement(hr=60)])
    assert info.value.reason == "correlation_id_missing"


def test_unknown_type_is_template_not_found_and_lookup_is_case_insensitive() -> None:
    templates = fhir(HR_QUANTITY)
    assert changes(templates, [measurement("HeartRate", hr=1)])[0].resource["code"]["text"] == "HeartRate"
    with pytest.raises(MappingFailure) as info:
        changes(templates, [measurement("steps", steps=1)])
    assert info.value.reason == "template_not_found"


# --- merges ------------------------------------------------------------------------------------


def persist(store: dict, result) -> None:
    for change in result:
        if change.action != "noop":
            store[change.id] = change.resource


def test_replaying_the_same_measurements_is_a_noop() -> None:
    for template in (HR_SAMPLED, HR_QUANTITY):
        templates = fhir(template)
        ms = [measurement(hr=65), measurement(at=T0 + timedelta(seconds=90), hr=70)]
        store: dict = {}
        persist(store, changes(templates, ms))
        replay = changes(templates, ms, existing=store, now=NOW + timedelta(hours=1))
        assert [c.action for c in replay] == ["noop"] * len(replay)
        # Replayed later (a new ingestion time) is still a no-op: same content.
        later = [measurement(hr=65, ingested=NOW + timedelta(days=1)),
                 measurement(at=T0 + timedelta(seconds=90), hr=70, ingested=NOW + timedelta(days=1))]
        assert {c.action for c in changes(templates, later, existing=store)} == {"noop"}


def test_new_data_in_the_window_amends_the_observation() -> None:
    templates = fhir(HR_SAMPLED)
    store: dict = {}
    persist(store, changes(templates, [measurement(hr=65)]))
    (change,) = changes(templates, [measurement(at=T0 + timedelta(minutes=2), hr=70)], existing=store,
                        now=NOW + timedelta(minutes=5))
    assert change.action == "update"
    assert change.resource["status"] == "amended"
    assert change.resource["issued"] == "2024-05-01T12:05:00Z"
    data = change.resource["valueSampledData"]["data"].split()
    assert (data[18], data[20]) == ("65", "70")  # both kept


def test_same_timestamp_latest_ingestion_wins_within_a_batch() -> None:
    templates = fhir(HR_QUANTITY)
    first = measurement(hr=65, ingested=NOW)
    correction = measurement(hr=66, ingested=NOW + timedelta(minutes=1))
    for batch in ([first, correction], [correction, first]):
        (change,) = changes(templates, batch)
        assert change.resource["valueQuantity"]["value"] == 66


def test_same_timestamp_later_ingestion_replaces_a_stored_value_and_a_stale_one_does_not() -> None:
    templates = fhir(HR_QUANTITY)
    store: dict = {}
    persist(store, changes(templates, [measurement(hr=65, ingested=NOW)]))
    (update,) = changes(templates, [measurement(hr=66, ingested=NOW + timedelta(minutes=1))], existing=store)
    assert (update.action, update.resource["valueQuantity"]["value"], update.resource["status"]) == (
        "update", 66, "amended")
    persist(store, [update])
    # The original message delivered again, late: it must not undo the correction.
    (stale,) = changes(templates, [measurement(hr=65, ingested=NOW)], existing=store)
    assert stale.action == "noop"
    assert store[stale.id]["valueQuantity"]["value"] == 66


def test_sampled_data_collision_new_value_wins() -> None:
    templates = fhir(HR_SAMPLED)
    store: dict = {}
    persist(store, changes(templates, [measurement(hr=65)]))
    (change,) = changes(templates, [measurement(at=T0 + timedelta(seconds=10), hr=99)], existing=store)
    assert change.resource["valueSampledData"]["data"].split()[18] == "99"


def test_merge_into_an_observation_medtech_wrote() -> None:
    """A stored MedTech Observation (no Vigil extension, .NET tick precision) is merged, not duplicated."""
    templates = fhir(HR_SAMPLED)
    (created,) = changes(templates, [measurement(hr=65)])
    medtech = {k: v for k, v in created.resource.items() if k != "extension"}
    medtech["issued"] = "2023-10-09T19:20:00.1234567+00:00"
    (replay,) = changes(templates, [measurement(hr=65)], existing={created.id: medtech})
    assert replay.action == "noop"
    (update,) = changes(templates, [measurement(at=T0 + timedelta(minutes=5), hr=80)], existing={created.id: medtech})
    assert update.action == "update" and update.id == created.id
    assert update.resource["effectivePeriod"] == medtech["effectivePeriod"]


def test_merge_into_an_observation_with_effective_date_time() -> None:
    templates = fhir(HR_QUANTITY)
    (created,) = changes(templates, [measurement(hr=65)])
    stored = {k: v for k, v in created.resource.items() if k != "effectivePeriod"}
    stored["effectiveDateTime"] = "2023-10-09T19:18:23Z"
    (update,) = changes(templates, [measurement(hr=66, ingested=NOW + timedelta(seconds=1))],
                        existing={created.id: stored})
    assert "effectiveDateTime" not in update.resource
    assert update.resource["effectivePeriod"] == {"start": "2023-10-09T19:18:23Z", "end": "2023-10-09T19:18:23Z"}
    Observation.model_validate(update.resource)


def test_components_are_merged_by_value_name() -> None:
    bp = {"typeName": "bp", "periodInterval": 0, "codes": [{"code": "85354-9", "system": LOINC}],
          "components": [
              {"codes": [{"code": "8480-6", "system": LOINC}], "value": {"valueName": "systolic", "valueType": "Quantity",
                                                                         "unit": "mmHg", "code": "mm[Hg]",
                                                                         "system": "http://unitsofmeasure.org"}},
              {"codes": [{"code": "8462-4", "system": LOINC}], "value": {"valueName": "diastolic", "valueType": "Quantity",
                                                                         "unit": "mmHg", "code": "mm[Hg]",
                                                                         "system": "http://unitsofmeasure.org"}}]}
    templates = fhir(bp)
    store: dict = {}
    persist(store, changes(templates, [measurement("bp", systolic=120)]))
    (change,) = changes(templates, [measurement("bp", ingested=NOW + timedelta(seconds=1), systolic=121,
                                                diastolic=80)], existing=store)
    assert [(c["code"]["text"], c["valueQuantity"]["value"]) for c in change.resource["component"]] == [
        ("systolic", 121), ("diastolic", 80)]
    Observation.model_validate(change.resource)


def test_two_readings_in_the_same_second_fold_into_one_observation() -> None:
    """MedTech's identifier has seconds precision: both readings target one Observation id."""
    templates = fhir(HR_QUANTITY)
    result = changes(templates, [measurement(hr=60, ingested=NOW),
                                 measurement(at=T0 + timedelta(milliseconds=400), hr=61,
                                             ingested=NOW + timedelta(seconds=1))])
    (change,) = result
    assert change.action == "create"
    assert change.resource["valueQuantity"]["value"] == 61
    assert change.resource["effectivePeriod"] == {"start": "2023-10-09T19:18:23Z", "end": "2023-10-09T19:18:23.4Z"}


# --- units -------------------------------------------------------------------------------------


WEIGHT = {"typeName": "weight", "periodInterval": 0, "codes": [{"code": "29463-7", "system": LOINC}],
          "value": {"valueName": "w", "valueType": "Quantity", "unit": "kg", "system": "http://unitsofmeasure.org",
                    "code": "kg"}}


def test_declared_source_unit_is_converted_and_the_original_kept() -> None:
    (change,) = changes(fhir(WEIGHT), [measurement("weight", w=("180", "[lb_av]"))])
    q = change.resource["valueQuantity"]
    assert (q["value"], q["unit"], q["system"], q["code"]) == (81.6466, "kg", "http://unitsofmeasure.org", "kg")
    assert q["extension"] == [{"url": "urn:vigil:extension:device-value", "valueQuantity": {
        "value": 180, "unit": "[lb_av]", "system": "http://unitsofmeasure.org", "code": "[lb_av]"}}]
    Observation.model_validate(change.resource)


def test_no_extension_when_the_unit_already_fits() -> None:
    (change,) = changes(fhir(WEIGHT), [measurement("weight", w=("80.5", "kg"))])
    assert change.resource["valueQuantity"] == {"value": 80.5, "unit": "kg", "system": "http://unitsofmeasure.org",
                                                "code": "kg"}


@pytest.mark.parametrize(
    ("code", "unit", "sent", "expected"),
    [
        ("41653-7", "mg/dL", ("5.5", "mmol/L"), (99.088, "mg/dL")),  # mass code: mmol/L converted
        ("15074-8", "mmol/L", ("99", "mg/dL"), (5.49512, "mmol/L")),  # molar code: mg/dL converted
        ("15074-8", "mmol/L", ("5.5", "mmol/L"), (5.5, "mmol/L")),
        ("8310-5", "Cel", ("98.6", "[degF]"), (37, "Cel")),
    ],
)
def test_target_unit_follows_the_code(code, unit, sent, expected) -> None:
    template = {"typeName": "x", "codes": [{"code": code, "system": LOINC}],
                "value": {"valueName": "v", "valueType": "Quantity", "unit": unit}}
    (change,) = changes(fhir(template), [measurement("x", v=sent)])
    q = change.resource["valueQuantity"]
    assert (q["value"], q["code"]) == expected


def test_a_unit_that_does_not_fit_the_code_is_refused() -> None:
    with pytest.raises(MappingFailure) as info:
        changes(fhir(WEIGHT), [measurement("weight", w=("37", "Cel"))])
    assert info.value.reason == "unknown_unit"
    assert "cannot convert 'Cel' to 'kg'" in info.value.detail


def test_sampled_data_values_are_converted() -> None:
    template = {"typeName": "temp", "periodInterval": 60, "codes": [{"code": "8310-5", "system": LOINC}],
                "value": {"valueName": "t", "valueType": "SampledData", "defaultPeriod": 60000, "unit": "Cel"}}
    (change,) = changes(fhir(template), [measurement("temp", t=("100.4", "[degF]"))])
    assert change.resource["valueSampledData"]["data"].split()[18] == "38"


# --- template loading --------------------------------------------------------------------------


def test_fhir_template_errors_are_located() -> None:
    with pytest.raises(TemplateError) as info:
        fhir({"typeName": "a", "periodInterval": 30, "codes": [], "value": {"valueName": "v", "valueType": "Number"}},
             {"typeName": "b", "codes": [], "value": {"valueName": "v", "valueType": "SampledData"}},
             {"typeName": "A", "codes": []},
             {"typeName": "c", "components": [{"codes": [], "value": {"valueType": "Quantity"}}]})
    issues = [(i.index, i.field) for i in info.value.issues]
    assert issues == [(0, "periodInterval"), (0, "value.valueType"), (1, "value.defaultPeriod"),
                      (2, "typeName"), (3, "codes"), (3, "components[0].value.valueName")]
    assert "duplicate template for typeName 'A' (template[0] already defines it)" in str(info.value)


def test_period_interval_names_are_accepted() -> None:
    templates = fhir({**HR_SAMPLED, "periodInterval": "Hourly"})
    assert templates.templates[0].period_interval == 60
