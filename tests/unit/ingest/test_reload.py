"""Template files reload when they change; a broken edit keeps the last working templates."""

from __future__ import annotations

import json
import os

import pytest

from ingest.templates import TemplateError
from ingest.templates.presets import preset_paths
from ingest.templates.reload import TemplateFiles


def write(path, data) -> None:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a visible change even on coarse clocks


def test_reload_on_change_and_keep_last_good_on_error(tmp_path) -> None:
    device_src, fhir_src = preset_paths("vigil-generic")
    device, fhir = tmp_path / "devicecontent.json", tmp_path / "fhirmapping.json"
    write(device, device_src.read_text())
    write(fhir, fhir_src.read_text())
    files = TemplateFiles(device, fhir)
    first = files.current()
    assert first.version == 1 and files.current() is first  # unchanged: no reload

    doc = json.loads(device.read_text())
    doc["template"] = doc["template"][:1]
    write(device, doc)
    second = files.current()
    assert second.version == 2 and len(second.devices.templates) == 1

    write(device, "{ broken")
    assert files.current() is second  # still working on the last good pair
    assert files.error is not None and "not valid JSON" in str(files.error)

    write(device, device_src.read_text())
    third = files.current()
    assert third.version == 3 and files.error is None and len(third.devices.templates) == 8


def test_the_first_load_must_succeed(tmp_path) -> None:
    device, fhir = tmp_path / "d.json", tmp_path / "f.json"
    write(device, {"templateType": "CollectionContent", "template": [{"templateType": "Nope", "template": {}}]})
    write(fhir, {"templateType": "CollectionFhir", "template": []})
    with pytest.raises(TemplateError, match="unknown device template type 'Nope'"):
        TemplateFiles(device, fhir)
