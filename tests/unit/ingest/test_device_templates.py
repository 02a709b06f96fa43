"""Device templates: what Vigil does with each message, including every way it can fail."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import ingest.templates.expressions as expressions
import ingest.templates.jmespath_compiler as jmespath_compiler
import ingest.templates.jsonpath_compiler as jsonpath_compiler
from ingest.templates import Measurement, TemplateError, load_device_templates

from .conftest import INGESTED


def calculated(**template) -> dict:
    base = {"typeName": "heartrate", "typeMatchExpression": "$..[?(@hr)]",
            "deviceIdExpression": "$.matchedToken.device", "timestampExpression": "$.matchedToken.time",
            "values": [{"valueName": "hr", "valueExpression": "$.matchedToken.hr", "required": True}]}
    base.update(template)
    return {"templateType": "CollectionContent", "template": [{"templateType": "CalculatedContent", "template": base}]}


MSG = {"hr": 72, "device": "d1", "time": "2024-05-01T08:00:00+02:00"}


def test_a_message_maps_to_a_measurement_in_utc() -> None:
    result = load_device_templates(calculated()).normalize(MSG, ingested_at=INGESTED)
    assert result.ok and result.reason is None and result.matched_templates == 1
    (m,) = result.measurements
    assert m.occurrence_time == datetime(2024, 5, 1, 6, 0, tzinfo=UTC)
    assert (m.type, m.device_id, m.value("hr"), m.template_index) == ("heartrate", "d1", "72", 0)


@pytest.mark.parametrize("payload", [b"{not json", "", b"\xff\xfe", "[1, 2", "42", '"text"', "null"])
def test_invalid_json_or_a_json_scalar_is_invalid_json(payload) -> None:
    result = load_device_templates(calculated()).normalize(payload)
    assert (result.reason, result.measurements) == ("invalid_json", [])


def test_bytes_and_text_payloads_are_parsed() -> None:
    templates = load_device_templates(calculated())
    assert templates.normalize(b'{"hr": 1, "device": "d", "time": "2024-05-01T08:00:00Z"}').ok
    assert templates.normalize('{"hr": 1, "device": "d", "time": "2024-05-01T08:00:00Z"}').ok
    assert templates.normalize(memoryview(b'{"hr": 1, "device": "d", "time": "2024-05-01T08:00:00Z"}')).ok


def test_a_message_matching_nothing_is_an_explicit_result() -> None:
    result = load_device_templates(calculated()).normalize({"steps": 5})
    assert result.measurements == []
    (error,) = result.errors
    assert error.reason == "no_template_matched"
    assert "1 template(s)" in error.detail


def test_an_empty_collection_matches_nothing() -> None:
    templates = load_device_templates({"templateType": "CollectionContent", "template": []})
    assert templates.normalize({"hr": 1}).reason == "no_template_matched"


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_null_or_blank_required_value(value) -> None:
    message = {**MSG, "hr": value}
    result = load_device_templates(calculated(typeMatchExpression="$..[?(@device)]")).normalize(message)
    (error,) = result.errors
    assert error.reason == "missing_required_value"
    assert (error.template_index, error.type_name, error.expression) == (0, "heartrate", "$.matchedToken.hr")
    assert "template[0] (heartrate)" in error.detail and "'hr'" in error.detail


def test_optional_missing_value_is_left_out() -> None:
    template = calculated(values=[
        {"valueName": "hr", "valueExpression": "$.matchedToken.hr", "required": "true"},
        {"valueName": "rr", "valueExpression": "$.matchedToken.rr", "required": "false"}])
    (m,) = load_device_templates(template).normalize(MSG).measurements
    assert [p.name for p in m.properties] == ["hr"]


def test_missing_device_id_or_timestamp() -> None:
    templates = load_device_templates(calculated())
    no_device = templates.normalize({"hr": 1, "time": "2024-05-01T08:00:00Z"})
    assert (no_device.reason, no_device.errors[0].field) == ("missing_required_value", "deviceIdExpression")
    no_time = templates.normalize({"hr": 1, "device": "d"})
    assert (no_time.reason, no_time.errors[0].field) == ("missing_required_value", "timestampExpression")


def test_correlation_id_becomes_required_once_defined() -> None:
    templates = load_device_templates(calculated(correlationIdExpression="$.matchedToken.session"))
    assert templates.normalize({**MSG, "session": "s-1"}).measurements[0].correlation_id == "s-1"
    result = templates.normalize(MSG)
    assert result.reason == "correlation_id_missing"
    assert result.errors[0].field == "correlationIdExpression"


def test_patient_and_encounter_are_optional() -> None:
    templates = load_device_templates(calculated(patientIdExpression="$.matchedToken.pid",
                                                 encounterIdExpression="$.matchedToken.eid"))
    (m,) = templates.normalize({**MSG, "pid": "123", "eid": "789"}).measurements
    assert (m.patient_id, m.encounter_id) == ("123", "789")
    (m,) = templates.normalize(MSG).measurements
    assert (m.patient_id, m.encounter_id) == (None, None)


def test_a_timestamp_without_offset_is_refused_unless_the_template_gives_a_zone() -> None:
    naive = {**MSG, "time": "2024-05-01T08:00:00"}
    result = load_device_templates(calculated()).normalize(naive)
    assert result.reason == "naive_timestamp"
    assert "timestampZone" in result.detail

    zoned = load_device_templates(calculated(timestampZone="America/New_York")).normalize(naive)
    assert zoned.measurements[0].occurrence_time == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)  # EDT = UTC-4
    # A timestamp that has an offset keeps it: the zone only reads naive ones.
    assert load_device_templates(calculated(timestampZone="America/New_York")).normalize(MSG) \
        .measurements[0].occurrence_time == datetime(2024, 5, 1, 6, 0, tzinfo=UTC)


def test_zone_read_from_the_message() -> None:
    templates = load_device_templates(calculated(timestampZoneExpression="$.Body.tz"))
    (m,) = templates.normalize({**MSG, "time": "2024-01-15", "tz": "Europe/Paris"}).measurements
    assert m.occurrence_time == datetime(2024, 1, 14, 23, 0, tzinfo=UTC)
    bad = templates.normalize({**MSG, "time": "2024-01-15", "tz": "Mars/Olympus"})
    assert bad.reason == "naive_timestamp" and "timestampZoneExpression" in bad.detail


@pytest.mark.parametrize(
    ("time", "reason"),
    [(1714550400, "incompatible_value"), ("yesterday", "incompatible_value"), ({"t": 1}, "incompatible_value")],
)
def test_timestamps_that_are_not_iso_8601(time, reason) -> None:
    result = load_device_templates(calculated()).normalize({**MSG, "time": time})
    assert result.reason == reason


def test_one_failing_template_does_not_hide_the_others() -> None:
    document = calculated()
    document["template"].append({"templateType": "JsonPathContent", "template": {
        "typeName": "steps", "typeMatchExpression": "$..[?(@hr)]", "deviceIdExpression": "$.device",
        "timestampExpression": "$.time", "values": [{"valueName": "steps", "valueExpression": "$.steps",
                                                     "required": True}]}})
    result = load_device_templates(document).normalize(MSG)
    assert [m.type for m in result.measurements] == ["heartrate"]
    assert [(e.reason, e.type_name) for e in result.errors] == [("missing_required_value", "steps")]
    assert result.matched_templates == 2


def test_values_are_strings_as_medtech_writes_them() -> None:
    template = calculated(values=[{"valueName": n, "valueExpression": f"$.matchedToken.{n}"}
                                  for n in ("i", "f", "w", "b", "o")])
    message = {**MSG, "i": 7, "f": 98.43639286275842, "w": 5.0, "b": True, "o": {"x": 1}}
    (m,) = load_device_templates(template).normalize(message).measurements
    assert [(p.name, p.value) for p in m.properties] == [
        ("i", "7"), ("f", "98.43639286275842"), ("w", "5"), ("b", "True"), ("o", '{"x":1}')]


def test_units_declared_or_read_from_the_message() -> None:
    template = calculated(values=[{"valueName": "w", "valueExpression": "$.matchedToken.w", "unit": "kg",
                                   "unitExpression": "$.matchedToken.u"}])
    templates = load_device_templates(template)
    (m,) = templates.normalize({**MSG, "w": 180, "u": "lbs"}).measurements
    assert m.properties[0].unit == "[lb_av]"
    (m,) = templates.normalize({**MSG, "w": 80}).measurements
    assert m.properties[0].unit == "kg"  # the declared unit when the message says none
    bad = templates.normalize({**MSG, "w": 80, "u": "stone"})
    assert bad.reason == "unknown_unit"
    assert bad.errors[0].field == "values[w].unitExpression"


def test_template_errors_are_located_and_all_reported() -> None:
    document = calculated(values=[{"valueName": "hr", "valueExpression": "add(a)", "unit": "furlongs"}],
                          defaultExpressionLanguage="JmesPath", timestampZone="Nowhere/Land",
                          deviceIdExpression="matchedToken.device", timestampExpression="matchedToken.time",
                          typeMatchExpression="Body")
    document["template"].append({"templateType": "JsonPathContent", "template": {
        "typeName": "x", "typeMatchExpression": {"value": "Body", "language": "JmesPath"},
        "deviceIdExpression": "$.d", "timestampExpression": "$.t", "values": [{"valueName": "v",
                                                                                 "valueExpression": "$.v",
                                                                                 "required": "maybe"}]}})
    with pytest.raises(TemplateError) as info:
        load_device_templates(document, name="devices.json")
    fields = [(i.index, i.field) for i in info.value.issues]
    assert fields == [(0, "timestampZone"), (0, "values[0].valueExpression"), (1, "typeMatchExpression"),
                      (1, "values[0].required")]
    text = str(info.value)
    assert "devices.json: template[0] (heartrate) timestampZone: unknown time zone 'Nowhere/Land'" in text
    assert "add() takes 2 argument(s), 1 given" in text
    assert "JmesPath expressions are only available in CalculatedContent" in text


def test_unknown_declared_unit_is_a_load_error() -> None:
    with pytest.raises(TemplateError, match="unknown unit 'furlongs'"):
        load_device_templates(calculated(values=[{"valueName": "v", "valueExpression": "$.v", "unit": "furlongs"}]))


def test_unreadable_file(tmp_path) -> None:
    with pytest.raises(TemplateError, match="cannot read file"):
        load_device_templates(tmp_path / "missing.json")


def test_expressions_are_compiled_once_at_load(monkeypatch) -> None:
    templates = load_device_templates(calculated(typeMatchExpression="$..[?(@hr && @device)]"))

    def refuse(*args, **kwargs):
        raise AssertionError("an expression was compiled while normalizing")

    monkeypatch.setattr(jsonpath_compiler, "jsonpath_parse", refuse)
    monkeypatch.setattr(jmespath_compiler.jmespath, "compile", refuse)
    monkeypatch.setattr(expressions, "compile_expression", refuse)
    for _ in range(3):
        assert templates.normalize(MSG).ok


def test_error_details_do_not_quote_payload_values() -> None:
    secret = "Jane Q. Patient 1961-02-03"
    templates = load_device_templates(calculated())
    for message in ({"hr": secret, "device": "d", "time": secret}, {"hr": None, "device": secret, "time": "x"}):
        for error in templates.normalize(message).errors:
            assert secret not in error.detail


def test_measurement_dict_round_trip() -> None:
    (m,) = load_device_templates(calculated(patientIdExpression="$.matchedToken.pid")).normalize(
        {**MSG, "pid": "p"}, ingested_at=INGESTED).measurements
    data = m.to_dict()
    assert data["OccurrenceTimeUtc"] == "2024-05-01T06:00:00Z"
    assert data["Properties"] == [{"Name": "hr", "Value": "72"}]
    back = Measurement.from_dict(data)
    assert (back.type, back.occurrence_time, back.ingestion_time, back.patient_id, back.properties) == (
        m.type, m.occurrence_time, m.ingestion_time, m.patient_id, m.properties)


def test_a_mutated_message_is_walked_again() -> None:
    templates = load_device_templates({"templateType": "CollectionContent", "template": [
        {"templateType": "JsonPathContent", "template": {"typeName": t, "typeMatchExpression": f"$..[?(@{t})]",
                                                         "deviceIdExpression": "$.d", "timestampExpression": "$.t",
                                                         "values": [{"valueName": t, "valueExpression": f"$.{t}"}]}}
        for t in ("a", "b")]})
    envelope = {"Body": {"a": 1, "d": "x", "t": "2024-05-01T00:00:00Z"}}
    assert [m.type for m in templates.normalize_envelope(envelope).measurements] == ["a"]
    envelope["Body"]["b"] = 2
    assert [m.type for m in templates.normalize_envelope(envelope).measurements] == ["a", "b"]
