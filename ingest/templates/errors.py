"""Errors of the mapping-template engine.

Two kinds, kept apart on purpose:

* `TemplateError` — a template *file* is wrong. Raised at load time, never per message. It lists
  every problem found, each naming the file, the template index and the field, so one run of
  `vigil templates check` shows them all.
* `MessageError` — one device message (or one measurement group) could not be mapped. It carries a
  machine-readable `reason` from the dead-letter vocabulary below and a human-readable `detail`
  that names the template and expression involved. Details name *where* the problem is, never the
  reading values or names inside the payload (the dead-letter store keeps the payload itself).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# --- dead-letter reason vocabulary -------------------------------------------------------------
# A message that could not be processed lands in the dead-letter store under exactly one of these.
INVALID_JSON = "invalid_json"
"""The payload is not JSON (or not a JSON object/array)."""
NO_TEMPLATE_MATCHED = "no_template_matched"
"""No device template's typeMatchExpression matched the message (MedTech dropped these silently)."""
MISSING_REQUIRED_VALUE = "missing_required_value"
"""A required value, device id, timestamp or correlation id was absent, null or blank."""
EXPRESSION_ERROR = "expression_error"
"""An expression failed on this message (a custom function error, several results where one was
expected, a type error inside JMESPath)."""
INCOMPATIBLE_VALUE = "incompatible_value"
"""A value has the wrong shape for its target: a non-numeric Quantity, two values in one
single-valued Quantity group, an unparseable timestamp."""
UNKNOWN_UNIT = "unknown_unit"
"""A unit Vigil does not know, or one that cannot be converted to the code's canonical unit."""
NAIVE_TIMESTAMP = "naive_timestamp"
"""A timestamp without a UTC offset, and the template does not say which zone to read it in."""
TEMPLATE_NOT_FOUND = "template_not_found"
"""A measurement's type has no FHIR mapping template."""
UNKNOWN_DEVICE = "unknown_device"
"""Lookup identity mode: no Device with this identifier (or it is linked to no Patient)."""
UNKNOWN_ENCOUNTER = "unknown_encounter"
"""An encounter id was given (or required) and no such Encounter exists."""
DEVICE_PATIENT_MISMATCH = "device_patient_mismatch"
"""The message names a patient, but the Device is linked to a different Patient."""
IDENTITY_NOT_DEFINED = "identity_not_defined"
"""The identity mode needs an id the message does not carry (Create without a patient id,
LookupWithEncounter without an encounter id)."""
CORRELATION_ID_MISSING = "correlation_id_missing"
"""A correlation id is required (correlationIdExpression defined, or a FHIR template grouping by
correlation id, periodInterval -1) and the message or measurement has none."""
AMBIGUOUS_IDENTIFIER = "ambiguous_identifier"
"""More than one Device/Patient/Encounter carries the identifier (MedTech's
MultipleResourceFoundException)."""

REASONS: dict[str, str] = {
    INVALID_JSON: "the payload is not a JSON object or array",
    NO_TEMPLATE_MATCHED: "no device template matched the message",
    MISSING_REQUIRED_VALUE: "a required value was missing, null or blank",
    EXPRESSION_ERROR: "a template expression failed on this message",
    INCOMPATIBLE_VALUE: "a value does not fit its target type",
    UNKNOWN_UNIT: "the unit is unknown or cannot be converted to the canonical unit",
    NAIVE_TIMESTAMP: "a timestamp has no UTC offset and the template gives no time zone",
    TEMPLATE_NOT_FOUND: "no FHIR template for the measurement type",
    UNKNOWN_DEVICE: "no Device with this identifier, or it has no Patient",
    UNKNOWN_ENCOUNTER: "no Encounter with this identifier",
    DEVICE_PATIENT_MISMATCH: "the Device is linked to a different Patient",
    IDENTITY_NOT_DEFINED: "the identity mode needs an id the message does not carry",
    CORRELATION_ID_MISSING: "a correlation id is required and the message has none",
    AMBIGUOUS_IDENTIFIER: "several resources carry the same identifier",
}


@dataclass(frozen=True)
class TemplateIssue:
    """One problem in a template file."""

    file: str  # file path or the name given to the loader
    index: int | None  # position in the collection's `template` array; None for the root
    field: str  # dotted field path inside that template, e.g. "values[0].valueName"
    message: str
    type_name: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.index is not None:
            where += f": template[{self.index}]"
            if self.type_name:
                where += f" ({self.type_name})"
        if self.field:
            where += f" {self.field}"
        return f"{where}: {self.message}"


class TemplateError(ValueError):
    """A template file failed to load. `issues` lists every problem found, in file order."""

    def __init__(self, issues: list[TemplateIssue]):
        self.issues = list(issues)
        super().__init__(self._render())

    def _render(self) -> str:
        if len(self.issues) == 1:
            return str(self.issues[0])
        return f"{len(self.issues)} template problems:\n" + "\n".join(f"  - {i}" for i in self.issues)


@dataclass(frozen=True)
class MessageError:
    """Why one message (or measurement group) could not be mapped.

    `reason` is one of the constants above; `detail` is for people and never quotes reading
    values. `template_index`/`type_name`/`expression`/`field` say which template part failed.
    """

    reason: str
    detail: str
    template_index: int | None = None
    type_name: str | None = None
    field: str | None = None
    expression: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class MappingFailure(Exception):
    """Raised inside the engine for one message/group; converted to a `MessageError` at the edge."""

    def __init__(self, reason: str, detail: str, **where: Any):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.where = where

    def to_error(self, **defaults: Any) -> MessageError:
        merged = {**defaults, **{k: v for k, v in self.where.items() if v is not None}}
        return MessageError(reason=self.reason, detail=self.detail, **merged)


@dataclass
class ErrorList:
    """A small accumulator used by the loaders so every issue is reported, not just the first."""

    file: str
    issues: list[TemplateIssue] = field(default_factory=list)

    def add(self, index: int | None, field_: str, message: str, type_name: str | None = None) -> None:
        self.issues.append(TemplateIssue(self.file, index, field_, message, type_name))

    def raise_if_any(self) -> None:
        if self.issues:
            raise TemplateError(self.issues)
