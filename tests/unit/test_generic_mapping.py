"""The generic device message → R4 Observation (the foundation's thin mapping)."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.observation import Observation

from ingest.errors import IngestError
from ingest.generic import to_observation


def msg(type_: str, values: dict, time: str = "2026-11-20T07:30:00-05:00", **extra) -> dict:
    return {"deviceId": "dev-1", "patientId": "p1", "type": type_, "time": time, "values": values, **extra}


@pytest.mark.parametrize(
    ("type_", "values", "loinc", "value", "unit"),
    [
        ("heart_rate", {"bpm": 72}, "8867-4", 72, "/min"),
        ("spo2", {"percent": 95}, "2708-6", 95, "%"),
        ("body_weight", {"weight": 80.5}, "29463-7", 80.5, "kg"),
        ("body_weight", {"weight": 180, "unit": "[lb_av]"}, "29463-7", 81.65, "kg"),
        ("body_weight", {"weight": 180, "unit": "lb"}, "29463-7", 81.65, "kg"),
        ("glucose", {"glucose": 110}, "41653-7", 110, "mg/dL"),
        ("glucose", {"glucose": 5.5, "unit": "mmol/L"}, "41653-7", 99.09, "mg/dL"),
        ("body_temp", {"temperature": 100.4, "unit": "[degF]"}, "8310-5", 38.0, "Cel"),
    ],
)
def test_single_value_types_map_to_loinc_and_canonical_ucum(type_, values, loinc, value, unit) -> None:
    obs = to_observation(msg(type_, values))
    Observation.model_validate(obs)
    assert obs["code"]["coding"][0] == {"system": "http://loinc.org", "code": loinc,
                                        "display": obs["code"]["coding"][0]["display"]}
    q = obs["valueQuantity"]
    assert (q["system"], q["code"]) == ("http://unitsofmeasure.org", unit)
    assert q["value"] == pytest.approx(value, abs=0.01)
    assert obs["effectiveDateTime"] == "2026-11-20T12:30:00.000Z"  # stored in UTC
    assert obs["subject"] == {"reference": "Patient/p1"}


def test_converted_values_keep_what_the_device_sent() -> None:
    obs = to_observation(msg("body_weight", {"weight": 180, "unit": "lb"}))
    assert obs["note"] == [{"text": "Device reported weight 180 [lb_av]"}]


def test_blood_pressure_is_a_panel_with_systolic_and_diastolic_components() -> None:
    obs = to_observation(msg("blood_pressure", {"systolic": 150, "diastolic": 95}))
    Observation.model_validate(obs)
    assert obs["code"]["coding"][0]["code"] == "85354-9"
    assert "valueQuantity" not in obs
    comps = {c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"] for c in obs["component"]}
    assert comps == {"8480-6": 150, "8462-4": 95}
    assert obs["category"][0]["coding"][0]["code"] == "vital-signs"


def test_spo2_carries_both_core_and_pulse_oximetry_codes() -> None:
    codes = [c["code"] for c in to_observation(msg("spo2", {"percent": 97}))["code"]["coding"]]
    assert codes == ["2708-6", "59408-5"]


def test_same_reading_gets_the_same_id_whatever_the_offset_it_was_sent_with() -> None:
    a = to_observation(msg("heart_rate", {"bpm": 70}, time="2026-11-20T07:30:00-05:00"))
    b = to_observation(msg("heart_rate", {"bpm": 70}, time="2026-11-20T12:30:00Z"))
    assert a["id"] == b["id"] and a["identifier"] == b["identifier"]


@pytest.mark.parametrize(
    ("message", "reason", "mentions"),
    [
        (["not", "an", "object"], "not_an_object", "list"),
        ({"deviceId": "d", "patientId": "p", "type": "heart_rate", "values": {"bpm": 1}}, "missing_field", "'time'"),
        (msg("ecg", {"mv": 1}), "unknown_type", "ecg"),
        (msg("heart_rate", {"bpm": 70}, time="2026-11-20T07:30:00"), "naive_timestamp", "offset"),
        (msg("heart_rate", {"bpm": 70}, time="yesterday"), "invalid_timestamp", "'time'"),
        (msg("heart_rate", {"bpm": "seventy"}), "invalid_value", "values.bpm"),
        (msg("heart_rate", {"bpm": 900}), "out_of_range", "values.bpm"),
        (msg("body_weight", {"weight": 80, "unit": "stone"}), "unknown_unit", "stone"),
        (msg("blood_pressure", {"systolic": 120}), "missing_field", "values.diastolic"),
    ],
)
def test_bad_messages_say_what_and_where(message, reason, mentions) -> None:
    with pytest.raises(IngestError) as err:
        to_observation(message)
    assert err.value.reason == reason
    assert mentions in err.value.detail


def test_error_details_do_not_quote_reading_values() -> None:
    with pytest.raises(IngestError) as err:
        to_observation(msg("heart_rate", {"bpm": 987}))
    assert "987" not in err.value.detail


def test_the_same_device_and_time_for_two_patients_are_two_readings() -> None:
    a = to_observation(msg("heart_rate", {"bpm": 70}))
    b = to_observation({**msg("heart_rate", {"bpm": 70}), "patientId": "p2"})
    assert a["id"] != b["id"]
