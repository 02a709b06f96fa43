"""The template collection's per-message shortcuts give the same measurements as evaluating every
template on its own: templates discriminating on one key (`X[?type == '...']`) are grouped once per
message, and templates with the same id/time expressions on the same token share one evaluation."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from ingest.templates.device_loader import load_device_templates

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def calculated(type_name: str, match: str, value: str) -> dict:
    return {"templateType": "CalculatedContent", "template": {
        "typeName": type_name, "typeMatchExpression": match, "defaultExpressionLanguage": "JmesPath",
        "deviceIdExpression": "matchedToken.deviceId", "timestampExpression": "matchedToken.time",
        "values": [{"valueName": "v", "valueExpression": value, "required": True}]}}


COLLECTION = {"templateType": "CollectionContent", "template": [
    calculated("bp", "to_array(Body)[?type == 'bp']", "matchedToken.sys"),
    calculated("pulse", "to_array(Body)[?type == 'bp' && pulse != null]", "matchedToken.pulse"),
    calculated("weight", "to_array(Body)[?type == 'weight']", "matchedToken.kg"),
    calculated("spo2", "to_array(Body)[?type == 'spo2']", "matchedToken.pct"),
]}


def summary(result) -> list[tuple[str, str, str, str | None]]:
    return [(m.type, m.device_id, m.occurrence_time.isoformat(), m.value("v")) for m in result.measurements]


def test_grouped_dispatch_keeps_template_order_then_match_order_and_equals_each_template_alone() -> None:
    templates = load_device_templates(COLLECTION)
    body = [
        {"type": "weight", "deviceId": "d1", "time": "2026-11-20T08:00:00Z", "kg": 80.5},
        {"type": "bp", "deviceId": "d1", "time": "2026-11-20T08:01:00Z", "sys": 128, "pulse": 70},
        {"type": "bp", "deviceId": "d1", "time": "2026-11-20T08:02:00Z", "sys": 131},
        {"type": 7, "deviceId": "d1", "time": "2026-11-20T08:03:00Z"},  # not a string: matches nothing
    ]
    got = summary(templates.normalize(json.dumps(body), ingested_at=NOW))
    assert got == [
        ("bp", "d1", "2026-11-20T08:01:00+00:00", "128"),
        ("bp", "d1", "2026-11-20T08:02:00+00:00", "131"),
        ("pulse", "d1", "2026-11-20T08:01:00+00:00", "70"),
        ("weight", "d1", "2026-11-20T08:00:00+00:00", "80.5"),
    ]
    # Reference: each template on its own, outside the per-message cache.
    envelope = {"Body": body, "Properties": {}, "SystemProperties": {}}
    reference = []
    for template in templates.templates:
        for token in template.type_match.find(envelope):
            m = template.extract(envelope, token, NOW)
            reference.append((m.type, m.device_id, m.occurrence_time.isoformat(), m.value("v")))
    assert got == reference


def test_a_message_whose_key_matches_no_template_is_reported_not_dropped() -> None:
    result = load_device_templates(COLLECTION).normalize(b'{"type": "glucose", "deviceId": "d1"}', ingested_at=NOW)
    assert result.measurements == [] and result.reason == "no_template_matched"


def test_a_shared_header_failure_is_reported_for_every_template_it_affects() -> None:
    # Heart rate and SpO2 share the IoT Hub header (device id and time from the envelope); with
    # no time at all, both templates report the missing timestamp, and neither is emitted.
    from ingest.templates.presets import load_preset

    devices = load_preset("iot-hub")[0]
    result = devices.normalize(b'{"HeartRate": 71, "SpO2": 97}',
                               system_properties={"iothub-connection-device-id": "monitor-1"},
                               properties={"patientId": "MRN-1"}, ingested_at=NOW)
    assert result.measurements == []
    assert [(e.type_name, e.field) for e in result.errors] == [("heart_rate", "timestampExpression"),
                                                               ("spo2", "timestampExpression")]
    ok = devices.normalize(b'{"HeartRate": 71, "SpO2": 97}',
                           system_properties={"iothub-connection-device-id": "monitor-1",
                                              "iothub-enqueuedtime": "2026-11-20T08:00:00Z"},
                           properties={"patientId": "MRN-1"}, ingested_at=NOW)
    assert [(m.type, m.device_id, m.patient_id, m.value(m.properties[0].name)) for m in ok.measurements] == [
        ("heart_rate", "monitor-1", "MRN-1", "71"), ("spo2", "monitor-1", "MRN-1", "97")]
    assert {m.occurrence_time for m in ok.measurements} == {datetime(2026, 11, 20, 8, 0, tzinfo=UTC)}


def test_tokens_built_by_a_match_never_share_a_header_with_another_templates_tokens() -> None:
    """A projection builds new lists as tokens; one freed after its template ran can hand its
    memory (and id) to the next template's token. Each reading keeps its own device and time."""
    def projecting(name: str) -> dict:
        return {"templateType": "CalculatedContent", "template": {
            "typeName": name, "defaultExpressionLanguage": "JmesPath",
            "typeMatchExpression": f"Body.{name}[*].[dev, time, val]",
            "deviceIdExpression": "matchedToken[0]", "timestampExpression": "matchedToken[1]",
            "values": [{"valueName": "v", "valueExpression": "matchedToken[2]", "required": True}]}}

    names = "abcdef"
    templates = load_device_templates({"templateType": "CollectionContent", "template": [projecting(n) for n in names]})
    message = {n: [{"dev": f"dev-{n}", "time": f"2026-0{i + 1}-01T00:00:00Z", "val": i}] for i, n in enumerate(names)}
    for _ in range(3):
        got = [(m.type, m.device_id, m.occurrence_time.month, m.value("v"))
               for m in templates.normalize(message, ingested_at=NOW).measurements]
        assert got == [(n, f"dev-{n}", i + 1, str(i)) for i, n in enumerate(names)]


def test_a_grouped_type_match_that_fails_reports_like_the_expression_itself() -> None:
    templates = load_device_templates({"templateType": "CollectionContent", "template": [
        calculated("hr", "sort(Body.items)[?type == 'hr']", "matchedToken.v")]})
    result = templates.normalize(b'{"items": [{"type": "hr", "v": 1}]}', ingested_at=NOW)
    [error] = result.errors
    assert (error.reason, error.field) == ("expression_error", "typeMatchExpression")
    assert "type error in sort()" in error.detail and "sort(Body.items)" in error.detail
