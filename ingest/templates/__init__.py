"""Vigil's MedTech-compatible mapping-template engine.

Typical use by the ingest handler::

    devices = load_device_templates("devicecontent.json")
    fhir = load_fhir_templates("fhirmapping.json")

    result = devices.normalize(body, properties=props, system_properties=sys_props, ingested_at=t)
    if result.errors:                      # dead-letter the message with result.reason / .detail
        ...
    for group in group_measurements(result.measurements):
        ids = identity.resolve(group)       # ingest.identity
        for change in fhir.observations(group, patient_id=ids.patient_id, device_id=ids.device_id,
                                        encounter_id=ids.encounter_id, existing=read_or_none):
            if change.action != "noop":
                store.update(change.resource)   # PUT to the deterministic id

Nothing here does I/O except reading template files when asked to.
"""

from ingest.templates.check import CheckReport, check_templates
from ingest.templates.device import DeviceTemplateSet, NormalizeResult
from ingest.templates.device_loader import load_device_templates
from ingest.templates.device_template import DeviceTemplate
from ingest.templates.errors import REASONS, MessageError, TemplateError, TemplateIssue
from ingest.templates.fhir import CodeValueTemplate, FhirTemplateSet, ObservationChange, load_fhir_templates
from ingest.templates.grouping import MeasurementGroup, ObservationGroup, group_measurements
from ingest.templates.measurement import Measurement, MeasurementProperty
from ingest.templates.observation import SERVICE_SYSTEM, sha256_id

__all__ = [
    "REASONS",
    "SERVICE_SYSTEM",
    "CheckReport",
    "CodeValueTemplate",
    "DeviceTemplate",
    "DeviceTemplateSet",
    "FhirTemplateSet",
    "Measurement",
    "MeasurementGroup",
    "MeasurementProperty",
    "MessageError",
    "NormalizeResult",
    "ObservationChange",
    "ObservationGroup",
    "TemplateError",
    "TemplateIssue",
    "check_templates",
    "group_measurements",
    "load_device_templates",
    "load_fhir_templates",
    "sha256_id",
]
