"""FHIR Observation -> readings: panels, alternate codes, unit conversion and clear rejections."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from rules.readings import ReadingError, observation_code_for, readings_from_observation
from rules.window import History, window_start

UCUM = "http://unitsofmeasure.org"


def obs(code: str | list[str], *, value: dict[str, Any] | None = None, components: list[dict[str, Any]] | None = None,
        status: str = "final", effective: str | None = "2025-03-10T07:00:00-05:00", **extra: Any) -> dict[str, Any]:
    codes = [code] if isinstance(code, str) else code
    out: dict[str, Any] = {"resourceType": "Observation", "id": "o1", "status": status,
                           "code": {"coding": [{"system": "http://loinc.org", "code": c} for c in codes]}}
    if effective:
        out["effectiveDateTime"] = effective
    if value is not None:
        out["valueQuantity"] = value
    if components is not None:
        out["component"] = components
    return out | extra


def comp(code: str, value: float, unit: str = "mm[Hg]") -> dict[str, Any]:
    return {"code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "valueQuantity": {"value": value, "system": UCUM, "code": unit}}


def test_bp_panel_gives_systolic_and_diastolic_sharing_the_reference() -> None:
    found = readings_from_observation(obs("85354-9", components=[comp("8480-6", 150), comp("8462-4", 95)]))
    assert [(r.metric, r.value, r.ref) for r in found] == [
        ("systolic_bp", 150.0, "Observation/o1"), ("diastolic_bp", 95.0, "Observation/o1")]
    assert found[0].effective == datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


def test_spo2_with_both_us_core_codes_is_one_reading() -> None:
    found = readings_from_observation(obs(["2708-6", "59408-5"], value={"value": 93, "system": UCUM, "code": "%"}))
    assert [(r.metric, r.value) for r in found] == [("spo2", 93.0)]


def test_spo2_pulse_oximetry_code_alone_is_spo2() -> None:
    found = readings_from_observation(obs("59408-5", value={"value": 91, "system": UCUM, "code": "%"}))
    assert [(r.metric, r.value) for r in found] == [("spo2", 91.0)]


@pytest.mark.parametrize(
    ("code", "value", "unit", "metric", "canonical"),
    [
        ("29463-7", 176.0, "[lb_av]", "body_weight", 176.0 * 0.45359237),
        ("29463-7", 80500, "g", "body_weight", 80.5),
        ("8310-5", 100.4, "[degF]", "body_temp", 38.0),
        ("15074-8", 3.0, "mmol/L", "glucose", 3.0 * 18.016),
        ("41653-7", 5.5, "mmol/L", "glucose", 5.5 * 18.016),  # the unit decides the scale, not the code
    ],
)
def test_units_are_converted_and_the_original_kept(code: str, value: float, unit: str, metric: str,
                                                   canonical: float) -> None:
    [found] = readings_from_observation(obs(code, value={"value": value, "system": UCUM, "code": unit}))
    assert found.metric == metric
    assert found.value == pytest.approx(canonical)
    assert (found.original_value, found.original_unit) == (value, unit)


def test_unknown_unit_is_rejected_with_what_is_accepted() -> None:
    with pytest.raises(ReadingError) as err:
        readings_from_observation(obs("29463-7", value={"value": 80, "system": UCUM, "code": "[stone_av]"}))
    message = str(err.value)
    assert "Observation/o1" in message and "body_weight" in message and "'[stone_av]'" in message
    assert "accepted: kg, [lb_av], g" in message


def test_quantity_without_ucum_code_is_rejected() -> None:
    with pytest.raises(ReadingError, match="no UCUM unit code"):
        readings_from_observation(obs("29463-7", value={"value": 80, "unit": "kilos"}))


def test_human_unit_text_equal_to_a_ucum_code_is_accepted() -> None:
    [found] = readings_from_observation(obs("29463-7", value={"value": 80, "unit": "kg"}))
    assert found.value == 80.0


def test_time_without_offset_is_rejected() -> None:
    with pytest.raises(ReadingError, match="UTC offset"):
        readings_from_observation(obs("8867-4", value={"value": 70, "system": UCUM, "code": "/min"},
                                      effective="2025-03-10T07:00:00"))


def test_missing_effective_time_is_rejected() -> None:
    with pytest.raises(ReadingError, match="no effectiveDateTime"):
        readings_from_observation(obs("8867-4", value={"value": 70, "system": UCUM, "code": "/min"}, effective=None))


def test_effective_period_uses_its_start() -> None:
    [found] = readings_from_observation(obs("41950-7", value={"value": 4000, "system": UCUM, "code": "/d"},
                                            effective=None, effectivePeriod={"start": "2025-03-10T00:00:00Z",
                                                                             "end": "2025-03-11T00:00:00Z"}))
    assert found.effective == datetime(2025, 3, 10, tzinfo=UTC)


@pytest.mark.parametrize("status", ["preliminary", "registered", "cancelled", "entered-in-error", "unknown"])
def test_statuses_that_are_not_results_give_no_readings(status: str) -> None:
    assert readings_from_observation(obs("8867-4", value={"value": 70, "system": UCUM, "code": "/min"},
                                         status=status)) == []


def test_unknown_codes_are_skipped_and_absent_values_too() -> None:
    assert readings_from_observation(obs("12345-6", value={"value": 1, "system": UCUM, "code": "1"})) == []
    absent = obs("85354-9", components=[comp("8480-6", 150),
                                        {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                                         "dataAbsentReason": {"text": "cuff error"}}])
    assert [r.metric for r in readings_from_observation(absent)] == ["systolic_bp"]


def test_non_quantity_value_for_a_known_metric_is_an_error() -> None:
    bad = obs("8867-4", valueString="seventy")
    with pytest.raises(ReadingError, match="valueString is not a measurement"):
        readings_from_observation(bad)


def test_score_observation_gives_total_and_items_of_its_own_instrument_only() -> None:
    phq9 = obs("44261-6", valueInteger=12, components=[
        {"code": {"coding": [{"system": "http://loinc.org", "code": "44260-8"}]}, "valueInteger": 1}])
    assert [(r.metric, r.value) for r in readings_from_observation(phq9)] == [("phq9_total", 12), ("phq9_item9", 1)]
    phq2 = obs("55758-7", valueInteger=3, components=[
        {"code": {"coding": [{"system": "http://loinc.org", "code": "44250-9"}]}, "valueInteger": 2}])
    assert [r.metric for r in readings_from_observation(phq2)] == ["phq2_total"]  # not phq9_item1


def test_value_integer_for_a_vital_sign_is_rejected() -> None:
    with pytest.raises(ReadingError, match="valueInteger carries no unit"):
        readings_from_observation(obs("8867-4", valueInteger=70))


def test_not_an_observation_or_no_id() -> None:
    with pytest.raises(ReadingError, match="expected an Observation"):
        readings_from_observation({"resourceType": "Patient", "id": "x"})
    with pytest.raises(ReadingError, match="no id"):
        readings_from_observation({"resourceType": "Observation", "status": "final"})


def test_query_codes_for_metrics() -> None:
    assert observation_code_for("systolic_bp") == "85354-9"
    assert observation_code_for("phq9_item9") == "44261-6"
    assert observation_code_for("body_weight") == "29463-7"


def test_history_keeps_the_event_version_of_an_observation() -> None:
    stored = readings_from_observation(obs("8867-4", value={"value": 70, "system": UCUM, "code": "/min"}))
    event = readings_from_observation(obs("8867-4", value={"value": 140, "system": UCUM, "code": "/min"}))
    history = History(stored, event)
    assert [r.value for r in history.series("heart_rate").readings] == [140.0]
    assert History(stored).with_latest(stored).series("heart_rate").readings == tuple(stored)


def test_window_start_rolling_and_calendar() -> None:
    at = datetime(2025, 3, 10, 12, tzinfo=UTC)
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    assert window_start(at, within=timedelta(hours=24), days=None) == datetime(2025, 3, 9, 12, tzinfo=UTC)
    assert window_start(at, within=None, days=0, tz=ZoneInfo("Asia/Tokyo")) == datetime(2025, 3, 9, 15, tzinfo=UTC)
    with pytest.raises(ValueError, match="within"):
        window_start(at, within=None, days=None)
