"""The patient of one event, read once and passed down to every message the event sends.

An Observation event (or one patient's turn in a sweep) reads the Patient with the patient's
enrollment (`handlers.patient_data.load_patient_rules`); the alert it opens, the patient's message
and its update all use that same resource. The preferences and contact points (phone numbers in
E.164, `notifications.preferences`) are worked out from it once, on first use, so an event that
sends nothing to the patient works out nothing.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhirstore.errors import ResourceGone, ResourceNotFound
from fhirstore.port import FhirStore
from notifications.preferences import PreferenceDefaults, Recipient, patient_recipient

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class PatientFile:
    """One patient as the messages of one event see them. `resource` is None when the store does
    not have the Patient (deleted, or never written): such a patient is sent nothing."""

    ref: str  # "Patient/<id>"
    resource: Mapping[str, Any] | None
    defaults: PreferenceDefaults
    now: datetime  # contact points whose period has ended by then are not used

    @property
    def id(self) -> str:
        return self.ref.partition("/")[2]

    @functools.cached_property
    def recipient(self) -> Recipient | None:
        """Channel order, quiet hours, locale, time zone and the normalized contact points, worked
        out once. Raises `PreferenceError` for preferences Vigil cannot use (the message says which)."""
        if self.resource is None:
            return None
        return patient_recipient(self.resource, self.defaults, now=self.now)

    def display(self) -> dict[str, str]:
        """What may be shown in logs and traces: the reference and message settings, never a name,
        birth date, phone number or address (PHI stays out of logs)."""
        out = {"ref": self.ref, "found": str(self.resource is not None)}
        if self.resource is not None and "recipient" in self.__dict__ and self.recipient is not None:
            r = self.recipient
            out.update(locale=r.locale, time_zone=r.time_zone, channels=",".join(c.channel for c in r.contacts))
        return out

    def __repr__(self) -> str:  # the resource holds PHI: reprs end up in logs and tracebacks
        return f"PatientFile({', '.join(f'{k}={v!r}' for k, v in self.display().items())})"


def patient_file(store: FhirStore, patient_ref: str, defaults: PreferenceDefaults, now: datetime) -> PatientFile:
    """The patient read from the store (one read), for callers that have not read it already."""
    try:
        resource: dict[str, Any] | None = store.read("Patient", patient_ref.partition("/")[2])
    except (ResourceNotFound, ResourceGone):
        resource = None
    return PatientFile(patient_ref, resource, defaults, now)
