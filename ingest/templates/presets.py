"""The template presets shipped in `ingest/presets/` (see docs/templates.md for each one)."""

from __future__ import annotations

from pathlib import Path

from ingest.templates.device import DeviceTemplateSet
from ingest.templates.device_loader import load_device_templates
from ingest.templates.fhir import FhirTemplateSet, load_fhir_templates

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"


def list_presets() -> list[str]:
    return sorted(p.name.removesuffix(".devicecontent.json") for p in PRESETS_DIR.glob("*.devicecontent.json"))


def preset_paths(name: str) -> tuple[Path, Path]:
    """(device template file, FHIR template file) of a preset; ValueError if there is none."""
    device = PRESETS_DIR / f"{name}.devicecontent.json"
    fhir = PRESETS_DIR / f"{name}.fhirmapping.json"
    if not device.is_file() or not fhir.is_file():
        raise ValueError(f"no preset named {name!r}; available: {', '.join(list_presets())}")
    return device, fhir


def load_preset(name: str) -> tuple[DeviceTemplateSet, FhirTemplateSet]:
    device, fhir = preset_paths(name)
    return load_device_templates(device), load_fhir_templates(fhir)
