"""`vigil templates check`: a local dry run of mapping templates (what MedTech users asked for)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.cli import main
from tests.support.compat import compat_path, require

COMPAT = compat_path("iomt-fhir", "sample-templates")


@pytest.fixture
def samples() -> Path:
    return require(COMPAT)


def test_check_shows_observations_and_dead_letter_reasons_per_message(tmp_path: Path, capsys) -> None:
    sample = tmp_path / "m.jsonl"
    sample.write_text("\n".join([
        json.dumps({"deviceId": "cuff-1", "patientId": "p1", "type": "blood_pressure",
                    "time": "2026-11-20T07:31:00-05:00", "values": {"systolic": 142, "diastolic": 88}}),
        json.dumps({"deviceId": "cuff-1", "patientId": "p1", "type": "heart_rate",
                    "time": "2026-11-20T07:31:00", "values": {"bpm": 70}}),
        json.dumps({"unrelated": True}),
    ]))
    assert main(["--data-dir", str(tmp_path / "d"), "templates", "check", str(sample)]) == 0
    out = capsys.readouterr().out
    assert "message 1: 1 measurement(s), 1 Observation(s)" in out
    assert "[naive_timestamp]" in out and "[no_template_matched]" in out


@pytest.mark.usefixtures("samples")
def test_check_warns_about_the_known_mistakes_of_the_medtech_samples(tmp_path: Path, capsys) -> None:
    code = main(["--data-dir", str(tmp_path / "d"), "templates", "check",
                 "--device", str(COMPAT / "basic__devicecontent.json"),
                 "--fhir", str(COMPAT / "basic__fhirmapping.json")])
    out = capsys.readouterr().out
    assert code == 0  # warnings, not errors: the files load as MedTech loaded them
    assert "coded LOINC 8867-4 (heart rate)" in out and "[bp_component_heart_rate]" in out


@pytest.mark.usefixtures("samples")
def test_an_invalid_template_file_is_rejected_naming_file_index_and_field(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "device.json"
    bad.write_text(json.dumps({"templateType": "CollectionContent", "template": [
        {"templateType": "CalculatedContent", "template": {"typeName": "hr", "deviceIdExpression": "$.d",
                                                           "timestampExpression": "$.t"}}]}))
    code = main(["--data-dir", str(tmp_path / "d"), "templates", "check", "--device", str(bad),
                 "--fhir", str(COMPAT / "basic__fhirmapping.json")])
    out = capsys.readouterr().out
    assert code == 1
    assert str(bad) in out and "template[0]" in out and "typeMatchExpression" in out


def test_presets_are_listed(tmp_path: Path, capsys) -> None:
    assert main(["--data-dir", str(tmp_path / "d"), "templates", "presets"]) == 0
    out = capsys.readouterr().out
    for name in ("vigil-generic", "fitbit", "google-fit", "healthkit", "iot-hub", "iot-central", "life365-hub"):
        assert name in out


# MedTech's documentation (how-to-use-calculated-functions-mappings, "Project Data From Matched
# Token And Original Event"): the message as documented, an envelope, and its template, which reads
# the device id from `$.Body` and every reading from `$.matchedToken`.
DOC_MESSAGE = {"Body": {"deviceId": "device123", "data": [
    {"systolic": "120", "diastolic": "80", "date": "2021-07-13T17:29:01.061144Z"},
    {"systolic": "122", "diastolic": "82", "date": "2021-07-13T17:28:01.061122Z"}]},
    "Properties": {"patientId": "patient-7"}, "SystemProperties": {}}
DOC_TEMPLATE = {"templateType": "CollectionContent", "template": [{"templateType": "CalculatedContent", "template": {
    "typeName": "heartrate", "typeMatchExpression": "$..[?(@systolic && @diastolic)]",
    "deviceIdExpression": "$.Body.deviceId", "patientIdExpression": "$.Properties.patientId",
    "timestampExpression": "$.matchedToken.date",
    "values": [{"required": "true", "valueExpression": "$.matchedToken.systolic", "valueName": "systolic"},
               {"required": "true", "valueExpression": "$.matchedToken.diastolic", "valueName": "diastolic"}]}}]}
DOC_FHIR = {"templateType": "CollectionFhir", "template": [{"templateType": "CodeValueFhir", "template": {
    "typeName": "heartrate", "periodInterval": 0,
    "codes": [{"code": "85354-9", "system": "http://loinc.org"}],
    "components": [
        {"codes": [{"code": "8480-6", "system": "http://loinc.org"}],
         "value": {"valueName": "systolic", "valueType": "Quantity", "unit": "mmHg",
                   "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
        {"codes": [{"code": "8462-4", "system": "http://loinc.org"}],
         "value": {"valueName": "diastolic", "valueType": "Quantity", "unit": "mmHg",
                   "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]}}]}


def test_check_wraps_a_documented_envelope_once_like_the_pipeline(tmp_path: Path, capsys) -> None:
    device, fhir, sample = tmp_path / "device.json", tmp_path / "fhir.json", tmp_path / "m.jsonl"
    device.write_text(json.dumps(DOC_TEMPLATE))
    fhir.write_text(json.dumps(DOC_FHIR))
    sample.write_text(json.dumps(DOC_MESSAGE) + "\n" + json.dumps(DOC_MESSAGE["Body"]) + "\n")
    code = main(["--data-dir", str(tmp_path / "d"), "templates", "check", str(sample),
                 "--device", str(device), "--fhir", str(fhir), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    envelope, bare = report["messages"]
    assert envelope["deadLetter"] == []
    assert [(m["DeviceId"], m["PatientId"], m["OccurrenceTimeUtc"]) for m in envelope["measurements"]] == [
        ("device123", "patient-7", "2021-07-13T17:29:01.061144Z"),
        ("device123", "patient-7", "2021-07-13T17:28:01.061122Z")]
    assert len(envelope["observations"]) == 2
    # The same body without an envelope: the same readings, without the property-borne patient.
    assert [m["DeviceId"] for m in bare["measurements"]] == ["device123", "device123"]
    assert {m["PatientId"] for m in bare["measurements"]} == {None}


@pytest.mark.usefixtures("samples")
def test_check_reads_iot_hub_properties_of_an_envelope_sample(tmp_path: Path, capsys) -> None:
    testinput = COMPAT.parent / "testinput"
    sample = tmp_path / "m.jsonl"
    payload = json.loads(next(testinput.glob("*__data_IotHubPayloadExample.json")).read_text(encoding="utf-8-sig"))
    sample.write_text(json.dumps(payload) + "\n")
    code = main(["--data-dir", str(tmp_path / "d"), "templates", "check", str(sample), "--json",
                 "--device", str(next(testinput.glob("*__data_IotJsonPathContentTemplateValid.json")))])
    assert code == 0
    (message,) = json.loads(capsys.readouterr().out)["messages"]
    (m,) = message["measurements"]
    assert (m["DeviceId"], m["Properties"]) == ("ev-d795-1d04-55ae", [{"Name": "hr", "Value": "203"}])


@pytest.mark.usefixtures("samples")
def test_check_merge_flag_builds_the_hourly_observation_of_several_messages(tmp_path: Path, capsys) -> None:
    fhir = tmp_path / "fhir.json"
    fhir.write_text(json.dumps({"templateType": "CollectionFhir", "template": [{"templateType": "CodeValueFhir",
        "template": {"typeName": "heartrate", "periodInterval": 60,
                     "codes": [{"code": "8867-4", "system": "http://loinc.org"}],
                     "value": {"defaultPeriod": 60000, "unit": "count/min", "valueName": "hr",
                               "valueType": "SampledData"}}}]}))
    sample = tmp_path / "m.jsonl"
    sample.write_text("\n".join(json.dumps({"heartrate": hr, "deviceid": "device1", "patientid": "patient1",
                                            "measurementdatetime": when})
                                for hr, when in ((65, "2023-10-09T19:18:23+00:00"), (70, "2023-10-09T19:20:05+00:00"))))
    args = ["--data-dir", str(tmp_path / "d"), "templates", "check", str(sample),
            "--device", str(COMPAT / "basic__devicecontent.json"), "--fhir", str(fhir)]
    assert main([*args, "--merge"]) == 0
    out = capsys.readouterr().out
    assert "batch: the 2 message(s) as one delivery: 1 Observation(s)" in out
    assert "readings at 18:65 20:70" in out
    assert main(args) == 0
    assert "batch:" not in capsys.readouterr().out


def test_check_dead_letters_a_reading_the_pipeline_would_refuse_as_future(tmp_path: Path, capsys,
                                                                          monkeypatch) -> None:
    """`templates check --merge` answers what ingest would do: a reading dated past VIGIL_MAX_FUTURE_SKEW_S
    after the host's clock (VIGIL_AS_OF here) is a future_reading dead letter, not an Observation."""
    monkeypatch.setenv("VIGIL_AS_OF", "2026-11-20T13:00:00Z")
    sample = tmp_path / "m.jsonl"
    sample.write_text("\n".join([
        json.dumps({"deviceId": "cuff-1", "patientId": "p1", "type": "heart_rate",
                    "time": "2026-11-20T07:31:00-05:00", "values": {"bpm": 70}}),
        json.dumps({"deviceId": "cuff-1", "patientId": "p1", "type": "heart_rate",
                    "time": "2027-11-20T07:31:00.1234567-05:00", "values": {"bpm": 71}}),
    ]))
    assert main(["--data-dir", str(tmp_path / "d"), "templates", "check", "--merge", "--json", str(sample)]) == 0
    report = json.loads(capsys.readouterr().out)
    reasons = [[e["reason"] for e in m["deadLetter"]] for m in report["messages"]]
    assert reasons == [[], ["future_reading"]]
    assert len(report["batchObservations"]) == 1
