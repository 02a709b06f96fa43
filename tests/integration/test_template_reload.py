"""Templates reload without a restart: a fixed template file takes effect on the next batch, and
the messages parked meanwhile can be replayed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ingest.templates.presets import preset_paths
from tests.support.pipeline import add_patient, count, make_host, reading


def test_a_template_edit_takes_effect_on_the_next_batch(data_dir: Path, tmp_path: Path) -> None:
    device_src, fhir_src = preset_paths("vigil-generic")
    device_file = tmp_path / "device.json"
    full = json.loads(device_src.read_text())
    without_hr = {**full, "template": [t for t in full["template"] if t["template"]["typeName"] != "heart_rate"]}
    assert 0 < len(without_hr["template"]) < len(full["template"])
    device_file.write_text(json.dumps(without_hr))
    shutil.copy(fhir_src, tmp_path / "fhir.json")

    host = make_host(data_dir, device_templates=device_file, fhir_templates=tmp_path / "fhir.json")
    host.acquire()
    add_patient(host.services, "p1", programs=())
    host.publish_device_messages([reading("p1", "heart_rate", "2026-11-20T07:30:00Z", {"bpm": 70})])
    host.run_until_idle(timeout_s=30)
    [letter] = host.services.dead_letters.list()
    assert letter.reason == "no_template_matched" and count(host.services, "Observation") == 0

    device_file.write_text(json.dumps(full, indent=1))  # the care team fixes the file; no restart
    host.publish_device_messages([reading("p1", "heart_rate", "2026-11-20T08:30:00Z", {"bpm": 71})])
    host.bus.publish("eh:device-messages", letter.payload)  # what `vigil dead-letters replay` does
    host.services.dead_letters.mark_replayed(letter.id)
    host.run_until_idle(timeout_s=30)
    assert count(host.services, "Observation") == 2
    assert host.services.dead_letters.count() == 0
    host.release()
    host.services.close()
