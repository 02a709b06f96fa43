"""Resolve a measurement group's device / patient / encounter identifiers to FHIR resource ids.

Modes, named as in MedTech (`ResourceIdentity:ResourceIdentityServiceType`,
https://github.com/microsoft/iomt-fhir/tree/main/docs):

* `Lookup` (default): find the Device by identifier; the patient is `Device.patient`.
* `Create`: like Lookup, but a missing Patient / Device is created as a shell with a deterministic
  id, sha256("{system}_{value}") as MedTech computes it (iomt-fhir #188: two concurrent batches
  must not create two Patients). Needs the message's patient identifier.
* `LookupWithEncounter`: like Lookup, and the encounter identifier is required and must exist.

What Vigil does differently, on purpose:

* **No device -> patient cache.** MedTech caches the resolved ids per device identifier for two
  hours, so a device handed to another patient keeps writing to the first one. Here every group is
  resolved against the store, so re-linking a Device takes effect on the next message.
* **Mismatch is always an error.** If the message names a patient and the Device is linked to a
  different Patient, the group is refused (`device_patient_mismatch`) in every mode; MedTech only
  checked this in Create mode and silently used the Device's patient otherwise.

Every failure is a `MappingFailure` with a dead-letter reason; details name identifiers' roles,
not their values.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from common.jsondata import json_copy
from fhirstore.errors import PreconditionFailed, ResourceGone, ResourceNotFound
from fhirstore.paging import search_all
from fhirstore.port import FhirStore
from ingest.templates.errors import (
    AMBIGUOUS_IDENTIFIER,
    DEVICE_PATIENT_MISMATCH,
    IDENTITY_NOT_DEFINED,
    UNKNOWN_DEVICE,
    UNKNOWN_ENCOUNTER,
    MappingFailure,
)
from ingest.templates.observation import sha256_id

LOOKUP = "Lookup"
CREATE = "Create"
LOOKUP_WITH_ENCOUNTER = "LookupWithEncounter"
MODES = {m.lower(): m for m in (LOOKUP, CREATE, LOOKUP_WITH_ENCOUNTER)}



class HasIdentifiers(Protocol):
    device_id: str
    patient_id: str | None
    encounter_id: str | None


@dataclass(frozen=True)
class ResolvedIdentity:
    device_id: str  # FHIR resource ids
    patient_id: str
    encounter_id: str | None = None


# Device lookups remembered per resolver: one per device in use; cleared whole when full (plain and
# cheap; it refills with the devices that keep sending).
KNOWN_MAX = 50_000


class IdentityResolver:
    """Resolves identifiers against a `FhirStore`. Lookups are remembered only on a store with a
    change mark (the embedded store, `SqliteFhirStore.change_mark`): an answer is reused while no
    Device or Patient was written since, by any process on the file; any other store is asked each time."""

    def __init__(self, store: FhirStore, mode: str = LOOKUP, *, device_identifier_system: str | None = None):
        normalized = MODES.get(mode.strip().lower()) if isinstance(mode, str) else None
        if normalized is None:
            raise ValueError(f"unknown identity mode {mode!r}; expected one of {', '.join(MODES.values())}")
        self.store = store
        self.mode = normalized
        self.device_system = device_identifier_system or None
        self._known: dict[tuple[str, str | None], tuple[str, str]] = {}
        self._known_mark: object = None
        self._devices: dict[str, list[dict[str, Any]]] | None = None  # one batch's Devices (for_batch)

    def for_batch(self, device_identifiers: Iterable[str]) -> IdentityResolver:
        """This resolver for one batch. On a store without a change mark (the HTTP adapter, where
        each lookup is a round trip) the batch's Devices are searched together, one search per
        50 identifiers (`identifier=a,b,...` is an OR, FHIR R4 search.html#combining), and each
        group is resolved from what came back: read for this batch, kept for no other. Should
        that search fail, each group is looked up on its own as before."""
        wanted = sorted({d for d in device_identifiers if d and d.strip()})
        if len(wanted) < 2 or self.mode == CREATE or getattr(self.store, "change_mark", None) is not None:
            return self
        devices: dict[str, list[dict[str, Any]]] = {d: [] for d in wanted}
        try:
            for start in range(0, len(wanted), 50):
                chunk = wanted[start:start + 50]
                token = ",".join(f"{_escape(self.device_system)}|{_escape(v)}" if self.device_system else _escape(v)
                                 for v in chunk)
                for device in search_all(self.store, "Device", {"identifier": token, "_count": str(2 * len(chunk))}):
                    for value in chunk:
                        if any(_identifier_matches(i, value, self.device_system) for i in device.get("identifier", [])):
                            devices[value].append(device)
        except Exception:  # noqa: BLE001 - whatever it was, the lookups one by one meet it and report it
            return self
        batch = copy.copy(self)
        batch._devices = devices
        return batch

    def resolve(self, group: HasIdentifiers) -> ResolvedIdentity:
        """Resolve one measurement group (anything with device_id, patient_id, encounter_id)."""
        if not group.device_id or not group.device_id.strip():
            raise MappingFailure(IDENTITY_NOT_DEFINED, "the measurement has no device identifier")
        if self.mode == LOOKUP_WITH_ENCOUNTER and not group.encounter_id:
            raise MappingFailure(
                IDENTITY_NOT_DEFINED,
                "identity mode LookupWithEncounter needs an encounter id; set encounterIdExpression",
            )
        if self.mode == CREATE:
            device_id, patient_id = self._ensure_device_and_patient(group.device_id, group.patient_id)
        else:
            device_id, patient_id = self._lookup(group.device_id, group.patient_id)
        encounter_id = self._encounter(group.encounter_id) if group.encounter_id else None
        return ResolvedIdentity(device_id, patient_id, encounter_id)

    # --- Lookup ---------------------------------------------------------------------------------

    def _lookup(self, device_identifier: str, patient_identifier: str | None) -> tuple[str, str]:
        mark_of = getattr(self.store, "change_mark", None)
        if mark_of is None:
            return self._lookup_now(device_identifier, patient_identifier)
        mark = mark_of(("Device", "Patient"))  # read before the lookup: a write in between moves it
        if mark != self._known_mark:
            self._known.clear()
            self._known_mark = mark
        key = (device_identifier, patient_identifier)
        found = self._known.get(key)
        if found is None:
            found = self._lookup_now(device_identifier, patient_identifier)  # failures are not remembered
            if len(self._known) > KNOWN_MAX:
                self._known.clear()
            self._known[key] = found
        return found

    def _lookup_now(self, device_identifier: str, patient_identifier: str | None) -> tuple[str, str]:
        device = self._find_one("Device", device_identifier, self.device_system)
        if device is None:
            raise MappingFailure(UNKNOWN_DEVICE, "no Device has the message's device identifier"
                                 + (f" in system {self.device_system}" if self.device_system else ""))
        patient_id = _reference_id(device.get("patient"), "Patient")
        if patient_id is None:
            raise MappingFailure(UNKNOWN_DEVICE, f"Device/{device['id']} is not linked to a Patient (Device.patient)")
        if patient_identifier:
            self._check_patient(device["id"], patient_id, patient_identifier)
        return device["id"], patient_id

    def _check_patient(self, device_id: str, patient_id: str, patient_identifier: str) -> None:
        """The message names a patient: it must be the one the Device is linked to."""
        if patient_identifier == patient_id:
            return
        try:
            patient = self.store.read("Patient", patient_id)
        except (ResourceNotFound, ResourceGone):
            raise MappingFailure(
                UNKNOWN_DEVICE, f"Device/{device_id} is linked to Patient/{patient_id}, which does not exist"
            ) from None
        values = {i.get("value") for i in patient.get("identifier", [])}
        if patient_identifier not in values:
            raise MappingFailure(
                DEVICE_PATIENT_MISMATCH,
                f"the message's patient identifier is not an identifier of Patient/{patient_id}, the patient "
                f"Device/{device_id} is linked to (re-link the Device, or fix the patient id in the payload)",
            )

    def _encounter(self, encounter_identifier: str) -> str:
        encounter = self._find_one("Encounter", encounter_identifier, None)
        if encounter is None:
            raise MappingFailure(UNKNOWN_ENCOUNTER, "no Encounter has the message's encounter identifier")
        return str(encounter["id"])

    def _find_one(self, resource_type: str, value: str, system: str | None) -> dict[str, Any] | None:
        if resource_type == "Device" and self._devices is not None and value in self._devices:
            found = self._devices[value]
        else:
            token = f"{_escape(system)}|{_escape(value)}" if system else _escape(value)
            found = self.store.search(resource_type, {"identifier": token}).resources
        # Exact match on the client as well: some servers compare only a prefix of long
        # identifiers (https://github.com/microsoft/iomt-fhir/tree/main/docs, "first 128 characters").
        exact = [r for r in found if any(_identifier_matches(i, value, system) for i in r.get("identifier", []))]
        if len(exact) > 1:
            raise MappingFailure(
                AMBIGUOUS_IDENTIFIER,
                f"{len(exact)} {resource_type} resources carry the same identifier "
                f"({', '.join(r['id'] for r in exact[:3])}); merge or retire the duplicates",
            )
        return exact[0] if exact else None

    # --- Create ---------------------------------------------------------------------------------

    def _ensure_device_and_patient(self, device_identifier: str, patient_identifier: str | None) -> tuple[str, str]:
        if not patient_identifier or not patient_identifier.strip():
            raise MappingFailure(
                IDENTITY_NOT_DEFINED, "identity mode Create needs a patient identifier; set patientIdExpression"
            )
        patient = self._ensure("Patient", patient_identifier, None, lambda p: None)
        patient_id = patient["id"]
        device = self._ensure(
            "Device", device_identifier, self.device_system,
            lambda d: d.__setitem__("patient", {"reference": f"Patient/{patient_id}"}),
        )
        linked = _reference_id(device.get("patient"), "Patient")
        if linked is None:
            device = self._link(device, patient_id)
        elif linked != patient_id:
            raise MappingFailure(
                DEVICE_PATIENT_MISMATCH,
                f"Device/{device['id']} is linked to Patient/{linked}, not to the patient the message names "
                f"(Patient/{patient_id})",
            )
        return device["id"], patient_id

    def _ensure(self, resource_type: str, value: str, system: str | None, fill: Any) -> dict[str, Any]:
        """Find by identifier, else create a shell at the deterministic id. Two concurrent callers
        PUT identical content to the same id: the second write is a no-op, never a duplicate."""
        found = self._find_one(resource_type, value, system)
        if found is not None:
            return found
        rid = sha256_id(system, value)
        try:
            return self.store.read(resource_type, rid)
        except (ResourceNotFound, ResourceGone):
            pass
        identifier = {"system": system, "value": value} if system else {"value": value}
        shell: dict[str, Any] = {"resourceType": resource_type, "id": rid, "identifier": [identifier]}
        fill(shell)
        result = self.store.update(shell)
        return result.resource or shell

    def _link(self, device: dict[str, Any], patient_id: str) -> dict[str, Any]:
        for _ in range(3):
            version = (device.get("meta") or {}).get("versionId")
            updated = json_copy(device)
            updated["patient"] = {"reference": f"Patient/{patient_id}"}
            try:
                return self.store.update(updated, if_match=version).resource or updated
            except PreconditionFailed:
                device = self.store.read("Device", device["id"])
                linked = _reference_id(device.get("patient"), "Patient")
                if linked is not None and linked != patient_id:
                    raise MappingFailure(
                        DEVICE_PATIENT_MISMATCH,
                        f"Device/{device['id']} was just linked to Patient/{linked} by another writer",
                    ) from None
                if linked == patient_id:
                    return device
        raise MappingFailure(DEVICE_PATIENT_MISMATCH, f"Device/{device['id']} kept changing while being linked")


def _reference_id(reference: Any, resource_type: str) -> str | None:
    if not isinstance(reference, dict):
        return None
    text = reference.get("reference")
    if not isinstance(text, str) or not text:
        return None
    parts = text.rstrip("/").split("/")
    # "Patient/123", "https://server/fhir/Patient/123", "Patient/123/_history/2"
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == resource_type:
        return parts[-1]
    return None


def _identifier_matches(identifier: dict[str, Any], value: str, system: str | None) -> bool:
    if identifier.get("value") != value:
        return False
    return system is None or identifier.get("system") == system


def _escape(text: str | None) -> str:
    """FHIR search escaping for token values (`\\`, `|`, `,`, `$`)."""
    out = text or ""
    for ch in ("\\", "|", ",", "$"):
        out = out.replace(ch, "\\" + ch)
    return out
