"""The shipped presets on realistic payloads: right codes, right units, valid R4, vital-signs profile.

The vital-signs profile requirements are those of FHIR R4 Vital Signs profile, https://hl7.org/fhir/R4/observation-vitalsigns.html.
"""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B.observation import Observation

from common.codes import LOINC, OBSERVATION_CATEGORY, UCUM, VITAL_SIGN_CODES
from ingest.templates import check_templates, group_measurements
from ingest.templates.presets import list_presets, load_preset, preset_paths

from .conftest import INGESTED


def observations(preset: str, message: Any, **kwargs) -> list[dict]:
    devices, fhir = load_preset(preset)
    result = devices.normalize(message, ingested_at=INGESTED, **kwargs)
    assert result.ok, result.detail
    out = []
    for group in group_measurements(result.measurements):
        out += [c.resource for c in fhir.observations(group, patient_id="pat-1", device_id="dev-1")]
    for obs in out:
        assert_valid_and_profiled(obs)
    return out


def assert_valid_and_profiled(obs: dict) -> None:
    Observation.model_validate(obs)  # valid R4 (fhir.resources R4B models)
    assert obs["status"] == "final"
    assert obs["subject"]["reference"] == "Patient/pat-1"
    assert "effectivePeriod" in obs or "effectiveDateTime" in obs
    loinc = [c["code"] for c in obs["code"]["coding"] if c.get("system") == LOINC]
    assert loinc, "Observation.code has a LOINC coding"
    if set(loinc) & VITAL_SIGN_CODES:
        assert any(c.get("system") == OBSERVATION_CATEGORY and c.get("code") == "vital-signs"
                   for cat in obs.get("category", []) for c in cat.get("coding", []))
    holders = [obs] + obs.get("component", [])
    assert any(k.startswith("value") for h in holders for k in h), "a value or component values"
    for holder in holders:
        quantity = holder.get("valueQuantity")
        if quantity is not None:
            assert quantity["system"] == UCUM and quantity["code"]
    for component in obs.get("component", []):
        assert any(c.get("system") == LOINC for c in component["code"]["coding"])
        assert any(k.startswith("value") for k in component)


def by_code(obs_list: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for obs in obs_list:
        code = next(c["code"] for c in obs["code"]["coding"] if c.get("system") == LOINC)
        out.setdefault(code, []).append(obs)
    return out


def qty(obs: dict) -> tuple:
    q = obs["valueQuantity"]
    return q["value"], q["code"]


def components(obs: dict) -> dict[str, tuple]:
    return {next(c["code"] for c in comp["code"]["coding"] if c.get("system") == LOINC):
            (comp["valueQuantity"]["value"], comp["valueQuantity"]["code"]) for comp in obs["component"]}


def test_every_preset_loads_without_warnings() -> None:
    names = list_presets()
    assert set(names) >= {"vigil-generic", "fitbit", "google-fit", "healthkit", "iot-hub", "iot-central", "life365-hub"}
    for name in names:
        report = check_templates(*preset_paths(name))
        assert report.ok and report.warnings == [], (name, [str(w) for w in report.warnings])


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="no preset named 'nope'"):
        preset_paths("nope")


def test_vigil_generic_shape() -> None:
    batch = [
        {"deviceId": "cuff-1", "patientId": "p1", "type": "blood_pressure", "time": "2024-05-01T07:30:00-05:00",
         "values": {"systolic": 142, "diastolic": 91, "pulse": 77}},
        {"deviceId": "scale-1", "patientId": "p1", "type": "body_weight", "time": "2024-05-01T07:31:00-05:00",
         "values": {"weight": 187.4, "unit": "lb"}},
        {"deviceId": "meter-1", "patientId": "p1", "type": "glucose", "time": "2024-05-01T07:32:00-05:00",
         "values": {"glucose": 6.2, "unit": "mmol/L"}},
        {"deviceId": "therm-1", "patientId": "p1", "type": "body_temp", "time": "2024-05-01T07:33:00-05:00",
         "values": {"temperature": 100.4, "unit": "[degF]"}},
        {"deviceId": "ox-1", "patientId": "p1", "type": "spo2", "time": "2024-05-01T07:34:00-05:00",
         "values": {"percent": 96}},
        {"deviceId": "hr-1", "patientId": "p1", "type": "heart_rate", "time": "2024-05-01T07:35:00-05:00",
         "values": {"bpm": 64}},
        {"deviceId": "hr-1", "patientId": "p1", "type": "resp_rate", "time": "2024-05-01T07:35:00-05:00",
         "values": {"rate": 16}},
    ]
    codes = by_code(observations("vigil-generic", batch))
    assert components(codes["85354-9"][0]) == {"8480-6": (142, "mm[Hg]"), "8462-4": (91, "mm[Hg]")}
    assert sorted(qty(o) for o in codes["8867-4"]) == [(64, "/min"), (77, "/min")]  # the cuff's pulse too
    assert qty(codes["29463-7"][0]) == (85.0032, "kg")
    assert codes["29463-7"][0]["valueQuantity"]["extension"][0]["valueQuantity"]["value"] == 187.4
    assert qty(codes["41653-7"][0]) == (111.699, "mg/dL")
    assert codes["41653-7"][0]["category"][0]["coding"][0]["code"] == "laboratory"
    assert qty(codes["8310-5"][0]) == (38, "Cel")
    assert qty(codes["2708-6"][0]) == (96, "%")
    assert qty(codes["9279-1"][0]) == (16, "/min")
    assert codes["8867-4"][0]["effectivePeriod"]["start"] == "2024-05-01T12:30:00Z"


def test_vigil_generic_unknown_type_is_a_dead_letter() -> None:
    devices, _ = load_preset("vigil-generic")
    result = devices.normalize({"deviceId": "d", "patientId": "p", "type": "mood", "time": "2024-05-01T07:30:00Z",
                                "values": {"score": 3}})
    assert result.reason == "no_template_matched"


FITBIT_WEIGHT = {"deviceId": "fitbit-user-7QX", "patientId": "p1", "timezone": "America/Chicago",
                 "unitSystem": "en_US",
                 "weight": [{"bmi": 27.2, "date": "2024-01-15", "logId": 1705325400000, "source": "Aria",
                             "time": "07:30:00", "weight": 187.4}]}
FITBIT_STEPS = {"deviceId": "fitbit-user-7QX", "patientId": "p1", "timezone": "America/Chicago",
                "activities-steps": [{"dateTime": "2024-01-14", "value": "8231"},
                                     {"dateTime": "2024-01-15", "value": "10412"}]}
FITBIT_HEART = {"deviceId": "fitbit-user-7QX", "patientId": "p1", "timezone": "America/Chicago",
                "activities-heart": [{"dateTime": "2024-01-15", "value": {"customHeartRateZones": [],
                                                                         "heartRateZones": [], "restingHeartRate": 61}}],
                "activities-heart-intraday": {"dataset": [{"time": "08:00:00", "value": 64},
                                                          {"time": "08:01:00", "value": 66},
                                                          {"time": "08:02:00", "value": 71}],
                                              "datasetInterval": 1, "datasetType": "minute"}}
FITBIT_SLEEP = {"deviceId": "fitbit-user-7QX", "patientId": "p1", "timezone": "America/Chicago",
                "sleep": [{"dateOfSleep": "2024-01-15", "duration": 27720000, "efficiency": 93,
                           "startTime": "2024-01-14T23:10:30.000", "endTime": "2024-01-15T06:52:30.000",
                           "isMainSleep": True, "minutesAsleep": 421, "minutesAwake": 41, "type": "stages",
                           "levels": {"summary": {"deep": {"count": 4, "minutes": 78},
                                                  "light": {"count": 30, "minutes": 231},
                                                  "rem": {"count": 7, "minutes": 112},
                                                  "wake": {"count": 28, "minutes": 41}},
                                      "data": [{"dateTime": "2024-01-14T23:10:30.000", "level": "wake", "seconds": 300}]}},
                          {"dateOfSleep": "2024-01-15", "startTime": "2024-01-15T14:00:00.000",
                           "endTime": "2024-01-15T14:30:00.000", "isMainSleep": False, "minutesAsleep": 28,
                           "type": "classic", "levels": {"summary": {}}}],
                "summary": {"totalMinutesAsleep": 449}}


def test_fitbit_weight_in_pounds_with_user_local_time() -> None:
    (obs,) = observations("fitbit", FITBIT_WEIGHT)
    assert qty(obs) == (85.0032, "kg")
    assert obs["effectivePeriod"]["start"] == "2024-01-15T13:30:00Z"  # 07:30 Chicago (CST, UTC-6)
    metric = dict(FITBIT_WEIGHT, unitSystem="METRIC", weight=[dict(FITBIT_WEIGHT["weight"][0], weight=85.0)])
    (obs,) = observations("fitbit", metric)
    assert qty(obs) == (85.0, "kg") and "extension" not in obs["valueQuantity"]


def test_fitbit_steps_heart_rate_and_sleep() -> None:
    steps = observations("fitbit", FITBIT_STEPS)
    assert [qty(o) for o in steps] == [(8231, "/d"), (10412, "/d")]
    assert steps[0]["category"][0]["coding"][0]["code"] == "activity"

    heart = by_code(observations("fitbit", FITBIT_HEART))
    assert [qty(o) for o in heart["8867-4"]] == [(64, "/min"), (66, "/min"), (71, "/min")]
    assert heart["8867-4"][0]["effectivePeriod"]["start"] == "2024-01-15T14:00:00Z"
    assert qty(heart["40443-4"][0]) == (61, "/min")

    (sleep,) = observations("fitbit", FITBIT_SLEEP)  # the nap (not main sleep) is not mapped
    assert qty(sleep) == (421, "min")
    assert components(sleep) == {"93831-6": (78, "min"), "93830-8": (231, "min"), "93829-0": (112, "min")}
    assert sleep["effectivePeriod"]["start"] == "2024-01-15T12:52:30Z"


GOOGLE_GLUCOSE = {
    "patientIdentifier": "user-oid-1", "deviceIdentifier": "user-oid-1.com.example.glucose.abc123",
    "minStartTimeNs": "1574159699023000000", "maxEndTimeNs": "1574159699023000000",
    "dataSourceId": "raw:com.google.blood_glucose:407408718192:BloodGlucose",
    "point": [{"startTimeNanos": "1574159699023000000", "endTimeNanos": "1574159699023000000",
               "dataTypeName": "com.google.blood_glucose",
               "value": [{"fpVal": 5, "mapVal": []}, {"intVal": 3, "mapVal": []}, {"intVal": 1, "mapVal": []},
                         {"intVal": 3, "mapVal": []}, {"intVal": 2, "mapVal": []}],
               "modifiedTimeMillis": "1627675845579"}]}
GOOGLE_HR = {
    "patientIdentifier": "user-oid-1", "deviceIdentifier": "user-oid-1.com.google.android.gms.merge",
    "dataSourceId": "derived:com.google.heart_rate.bpm:com.google.android.gms:merge_heart_rate_bpm",
    "point": [{"startTimeNanos": "1714550400000000000", "endTimeNanos": "1714550400000000000",
               "dataTypeName": "com.google.heart_rate.bpm", "value": [{"fpVal": 72.0, "mapVal": []}]},
              {"startTimeNanos": "1714550460000000000", "endTimeNanos": "1714550460500000000",
               "dataTypeName": "com.google.heart_rate.bpm", "value": [{"fpVal": 75.5, "mapVal": []}]}]}
GOOGLE_BP = {
    "patientIdentifier": "user-oid-1", "deviceIdentifier": "user-oid-1.com.omron.cuff",
    "dataSourceId": "raw:com.google.blood_pressure:com.omronhealthcare:bp",
    "point": [{"startTimeNanos": "1714550400000000000", "endTimeNanos": "1714550400000000000",
               "dataTypeName": "com.google.blood_pressure",
               "value": [{"fpVal": 131.0}, {"fpVal": 84.0}, {"intVal": 1}, {"intVal": 1}]}]}


def test_google_fit_glucose_in_mmol_is_converted_for_the_mass_code() -> None:
    (obs,) = observations("google-fit", GOOGLE_GLUCOSE)
    assert qty(obs) == (90.08, "mg/dL")
    assert obs["valueQuantity"]["extension"][0]["valueQuantity"] == {
        "value": 5, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"}
    assert obs["effectivePeriod"]["start"] == "2019-11-19T10:34:59.023Z"  # from endTimeNanos


def test_google_fit_heart_rate_and_blood_pressure() -> None:
    heart = observations("google-fit", GOOGLE_HR)
    assert [qty(o) for o in heart] == [(72, "/min"), (75.5, "/min")]
    assert heart[1]["effectivePeriod"]["start"] == "2024-05-01T08:01:00.5Z"
    (bp,) = observations("google-fit", GOOGLE_BP)
    assert components(bp) == {"8480-6": (131, "mm[Hg]"), "8462-4": (84, "mm[Hg]")}


def hk(**fields) -> dict:
    return {"uuid": "3F2504E0-4F89-11D3-9A0C-0305E82C3301", "startDate": "2024-05-01T08:00:00Z",
            "endDate": "2024-05-01T08:00:00Z", "deviceId": "iphone-1", "patientId": "p1", **fields}


def test_healthkit_messages() -> None:
    cases = [
        (hk(heartRate=72.0, unit="count/min"), "8867-4", (72, "/min")),
        (hk(bodyMass=176.0, unit="lb"), "29463-7", (79.8323, "kg")),  # some app versions send pounds
        (hk(bodyMass=80.0, unit="kg"), "29463-7", (80, "kg")),
        (hk(oxygenSaturation=0.97, unit="%"), "2708-6", (97, "%")),  # HealthKit's "%" is a fraction
        (hk(bloodGlucose=105.0, unit="mg/dL"), "41653-7", (105, "mg/dL")),
        (hk(bodyTemperature=37.2, unit="degC"), "8310-5", (37.2, "Cel")),
        (hk(respiratoryRate=14.0, unit="count/min"), "9279-1", (14, "/min")),
        (hk(stepCount=1234.0, unit="count"), "55423-8", (1234, "{steps}")),
    ]
    for message, code, expected in cases:
        (obs,) = observations("healthkit", message)
        assert (by_code([obs]).keys() == {code}, qty(obs)) == (True, expected), message


def test_healthkit_blood_pressure_reads_end_date() -> None:
    (obs,) = observations("healthkit", hk(systolic=121.0, diastolic=79.0, systolicUnit="mmHg", diastolicUnit="mmHg"))
    assert components(obs) == {"8480-6": (121, "mm[Hg]"), "8462-4": (79, "mm[Hg]")}


IOT_HUB_PROPERTIES = {"iothub-creation-time-utc": "2024-05-01T08:00:00.1234567Z", "patientId": "p1"}
IOT_HUB_SYSTEM = {"iothub-connection-device-id": "bedside-monitor-12", "iothub-enqueuedtime": "2024-05-01T08:00:01Z"}


def test_iot_hub_envelope() -> None:
    body = {"HeartRate": 88, "Systolic": 128, "Diastolic": 82, "SpO2": 97}
    devices, _ = load_preset("iot-hub")
    (m, *_) = devices.normalize(body, properties=IOT_HUB_PROPERTIES, system_properties=IOT_HUB_SYSTEM).measurements
    assert (m.device_id, m.patient_id) == ("bedside-monitor-12", "p1")
    codes = by_code(observations("iot-hub", body, properties=IOT_HUB_PROPERTIES, system_properties=IOT_HUB_SYSTEM))
    assert set(codes) == {"8867-4", "85354-9", "2708-6"}
    assert codes["8867-4"][0]["effectivePeriod"]["start"] == "2024-05-01T08:00:00.1234567Z"  # 100 ns kept


def test_iot_hub_without_device_properties_is_a_located_dead_letter() -> None:
    devices, _ = load_preset("iot-hub")
    result = devices.normalize({"HeartRate": 88})
    assert result.reason == "missing_required_value"
    assert result.errors[0].field == "deviceIdExpression"
    assert "iothub-connection-device-id" in result.errors[0].detail


def test_iot_central_export_in_fahrenheit() -> None:
    export = {"applicationId": "1dffa667", "messageSource": "telemetry", "deviceId": "1qsi9p8t5l2",
              "schema": "default@v1", "templateId": "dtmi:hpzy1kfcbt2:umua7dplmbd",
              "enqueuedTime": "2021-06-08T19:45:20.2020000Z",
              "telemetry": {"HeartRate": 75, "RespiratoryRate": 15, "BodyTemperature": 98.6,
                            "BloodPressure": {"Systolic": 118, "Diastolic": 76}, "BatteryLevel": 45},
              "enrichments": {"patientId": "p1"}, "messageProperties": {}}
    codes = by_code(observations("iot-central", export))
    assert qty(codes["8310-5"][0]) == (37, "Cel")
    assert components(codes["85354-9"][0]) == {"8480-6": (118, "mm[Hg]"), "8462-4": (76, "mm[Hg]")}
    assert qty(codes["9279-1"][0]) == (15, "/min")


LIFE365_EXPORT = {
    "hubId": "HUB-00912", "exportedAt": "2024-05-02T13:15:00Z", "patient": {"mrn": "MRN-4471"},
    "readings": [
        {"readingId": "r-1", "deviceSerial": "BP7250-1234", "kind": "BP", "takenAt": "2024-05-02T07:58:12-05:00",
         "sys": 142, "dia": 91, "pulse": 78, "uom": "mmHg"},
        {"readingId": "r-2", "deviceSerial": "SC-100-77", "kind": "WEIGHT", "takenAt": "2024-05-02T08:01:40-05:00",
         "value": 187.4, "uom": "lbs"},
        {"readingId": "r-3", "deviceSerial": "PO-3", "kind": "SPO2", "takenAt": "2024-05-02T08:03:00-05:00",
         "value": 96, "pulse": 74, "uom": "%"},
        {"readingId": "r-4", "deviceSerial": "GM-9", "kind": "GLUCOSE", "takenAt": "2024-05-02T08:05:00-05:00",
         "value": 6.1, "uom": "mmol/l", "mealContext": "fasting"},
        {"readingId": "r-5", "deviceSerial": "TH-1", "kind": "TEMP", "takenAt": "2024-05-02T08:06:00-05:00",
         "value": 99.1, "uom": "F"},
    ]}


def test_life365_style_export_is_a_template_not_code() -> None:
    """An unknown vendor format: the preset is two JSON template files and nothing else."""
    device_file, fhir_file = preset_paths("life365-hub")
    assert device_file.suffix == fhir_file.suffix == ".json"
    devices, _ = load_preset("life365-hub")
    ms = devices.normalize(LIFE365_EXPORT).measurements
    assert {m.patient_id for m in ms} == {"MRN-4471"}  # from the export, mixed with each reading
    assert [(m.type, m.device_id) for m in ms if m.type == "heart_rate"] == [
        ("heart_rate", "BP7250-1234"), ("heart_rate", "PO-3")]
    codes = by_code(observations("life365-hub", LIFE365_EXPORT))
    assert components(codes["85354-9"][0]) == {"8480-6": (142, "mm[Hg]"), "8462-4": (91, "mm[Hg]")}
    assert qty(codes["29463-7"][0]) == (85.0032, "kg")
    assert qty(codes["41653-7"][0]) == (109.898, "mg/dL")
    assert qty(codes["8310-5"][0]) == (37.2778, "Cel")
    assert qty(codes["2708-6"][0]) == (96, "%")


def test_life365_unknown_vendor_unit_is_refused() -> None:
    devices, _ = load_preset("life365-hub")
    export = {**LIFE365_EXPORT, "readings": [dict(LIFE365_EXPORT["readings"][1], uom="stone")]}
    result = devices.normalize(export)
    assert result.reason == "unknown_unit"


GENERIC_ALIASES = [
    # (type as people send it, values, LOINC, expected value)
    ("bloodpressure", {"systolic": 131, "diastolic": 84}, "85354-9", None),
    ("bp", {"sys": 131, "dia": 84}, "85354-9", None),
    ("bloodPressure", {"sbp": 131, "dbp": 84}, "85354-9", None),
    ("weight", {"weight": 81.5}, "29463-7", 81.5),
    ("bodyWeight", {"value": 81.5}, "29463-7", 81.5),
    ("temperature", {"temperature": 37.2}, "8310-5", 37.2),
    ("temp", {"temp": 37.2}, "8310-5", 37.2),
    ("glucose", {"value": 104}, "41653-7", 104),
    ("blood_glucose", {"blood_glucose": 104}, "41653-7", 104),
    ("spo2", {"spo2": 97}, "2708-6", 97),
    ("SpO2", {"SpO2": 97}, "2708-6", 97),
    ("oxygen_saturation", {"value": 97}, "2708-6", 97),
    ("heartrate", {"hr": 61}, "8867-4", 61),
    ("pulse", {"pulse": 61}, "8867-4", 61),
    ("respiratory_rate", {"respiratory_rate": 15}, "9279-1", 15),
]


@pytest.mark.parametrize(("type_name", "values", "loinc", "expected"), GENERIC_ALIASES,
                         ids=[f"{t}-{'-'.join(v)}" for t, v, _, _ in GENERIC_ALIASES])
def test_vigil_generic_accepts_common_type_and_value_names(type_name, values, loinc, expected) -> None:
    message = {"deviceId": "d-1", "patientId": "p1", "type": type_name, "time": "2024-05-01T07:30:00Z",
               "values": values}
    codes = by_code(observations("vigil-generic", message))
    assert list(codes) == [loinc]
    (obs,) = codes[loinc]
    if expected is None:
        assert components(obs) == {"8480-6": (131, "mm[Hg]"), "8462-4": (84, "mm[Hg]")}
    else:
        assert obs["valueQuantity"]["value"] == expected


def test_vigil_generic_alias_table_in_the_readme_matches_the_preset() -> None:
    """The README's table of types and value keys is the preset's: each row's names are accepted."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    # Rows of the table: | `canonical` | aliases | value keys | LOINC ... |
    rows = re.findall(r"^ *\| `(\w+)` \| ([^|]+) \| ([^|]+) \| \d", readme, flags=re.M)
    assert len(rows) >= 7, "README lists the generic preset's types"
    devices, _ = load_preset("vigil-generic")
    for canonical, type_cell, key_cell in rows:
        types = re.findall(r"`([^`]+)`", type_cell) + [canonical]
        keys = re.findall(r"`([^`]+)`", key_cell)
        for type_name in types:
            for key in keys:
                values = {key: 120}
                if canonical == "blood_pressure":
                    values = {"systolic": 120, key: 80} if key.lower() in ("diastolic", "dia", "dbp") else {
                        key: 120, "diastolic": 80}
                result = devices.normalize({"deviceId": "d", "patientId": "p", "type": type_name,
                                            "time": "2024-05-01T07:30:00Z", "values": values})
                assert result.ok, (type_name, key, result.detail)
                assert canonical in {m.type for m in result.measurements}, (type_name, key)


def test_vigil_generic_array_mixing_spellings_keeps_the_message_order() -> None:
    devices, _ = load_preset("vigil-generic")
    batch = [{"deviceId": "d", "patientId": "p", "type": t, "time": f"2024-05-01T07:3{i}:00Z",
              "values": {"systolic": 120 + i, "diastolic": 80}}
             for i, t in enumerate(["bp", "blood_pressure", "BP", "weight"])]
    batch[3]["values"] = {"weight": 80}
    result = devices.normalize(batch)
    assert result.ok
    assert [(m.type, m.value("systolic")) for m in result.measurements] == [
        ("blood_pressure", "120"), ("blood_pressure", "121"), ("blood_pressure", "122"), ("body_weight", None)]
