"""`vigil templates check`: a local dry run of mapping templates (what MedTech users asked for)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.cli import main
from tests.support.compat import compat_root

COMPAT = compat_root() / "sample-templates"


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


@pytest.mark.skipif(not COMPAT.is_dir(), reason="../shared/compat (beside the repository) is not present")
def test_check_warns_about_the_known_mistakes_of_the_medtech_samples(tmp_path: Path, capsys) -> None:
    code = main(["--data-dir", str(tmp_path / "d"), "templates", "check",
                 "--device", str(COMPAT / "basic__devicecontent.json"),
                 "--fhir", str(COMPAT / "basic__fhirmapping.json")])
    out = capsys.readouterr().out
    assert code == 0  # warnings, not errors: the files load as MedTech loaded them
    assert "coded LOINC 8867-4 (heart rate)" in out and "[bp_component_heart_rate]" in out


@pytest.mark.skipif(not COMPAT.is_dir(), reason="../shared/compat (beside the repository) is not present")
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
