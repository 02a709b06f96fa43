"""Every console view of a patient and every action, as a FHIR AuditEvent (HIPAA §164.312(b) audit
controls; FHIR R4 AuditEvent with the DICOM/HL7 codes its value sets name)."""

from __future__ import annotations

import uuid
from typing import Any

from common.clock import Clock, iso
from fhirstore.port import FhirStore

ACTION_SYSTEM = "urn:vigil:console-action"
# FHIR R4 AuditEvent.action: C create, R read, U update, E execute.
ACTIONS = {"view": "R", "create": "C", "update": "U", "execute": "E"}


def audit(store: FhirStore, clock: Clock, *, actor: str, action: str, kind: str, entities: list[str],
          detail: str = "", outcome: str = "0") -> dict[str, Any]:
    """Record that `actor` did `action` (a console action code, e.g. `view-patient`) on `entities`."""
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": uuid.uuid4().hex,
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
                 "display": "RESTful Operation"},
        "subtype": [{"system": ACTION_SYSTEM, "code": action}],
        "action": ACTIONS[kind],
        "recorded": iso(clock.now()),
        "outcome": outcome,  # 0 success, 4 minor failure (refused)
        "purposeOfEvent": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                        "code": "TREAT"}]}],
        # No actor: a sign-in to an account that does not exist (the detail names what was tried).
        "agent": [{"who": {"reference": actor} if actor else {"display": "unknown user"}, "requestor": True}],
        "source": {"observer": {"display": "Vigil console"}},
        "entity": [{"what": {"reference": ref}} for ref in entities],
    }
    if detail:
        event["entity"] = event["entity"] or [{"what": {"display": "console"}}]
        event["entity"][0]["description"] = detail[:1000]
    result = store.update(event)
    return result.resource or event
