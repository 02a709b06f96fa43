"""The parsed FHIR mapping template (MedTech's CodeValueFhir) and what it produces: plain data shared
by the loader (`fhir.py`) and the Observation builder (`observation.py`), so neither imports the other's
module to name it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FhirCode:
    code: str | None
    system: str | None
    display: str | None

    def coding(self) -> dict[str, str]:
        out = {}
        if self.system:
            out["system"] = self.system
        if self.code:
            out["code"] = self.code
        if self.display:
            out["display"] = self.display
        return out


@dataclass(frozen=True)
class CategoryConcept:
    text: str | None
    codes: tuple[FhirCode, ...]

    def concept(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.codes:
            out["coding"] = [c.coding() for c in self.codes]
        if self.text:
            out["text"] = self.text
        return out


@dataclass(frozen=True)
class ValueTemplate:
    value_type: str
    value_name: str
    unit: str | None = None
    code: str | None = None  # Quantity
    system: str | None = None  # Quantity
    default_period: float | None = None  # SampledData, milliseconds
    text: str | None = None  # CodeableConcept
    codes: tuple[FhirCode, ...] = ()  # CodeableConcept


@dataclass(frozen=True)
class ComponentTemplate:
    codes: tuple[FhirCode, ...]
    value: ValueTemplate


@dataclass
class CodeValueTemplate:
    index: int
    type_name: str
    period_interval: int
    codes: tuple[FhirCode, ...]
    category: tuple[CategoryConcept, ...] = ()
    value: ValueTemplate | None = None
    components: tuple[ComponentTemplate, ...] = ()
    unknown_fields: tuple[str, ...] = ()
    source: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def value_names(self) -> list[str]:
        names = [self.value.value_name] if self.value else []
        return names + [c.value.value_name for c in self.components]


@dataclass
class ObservationChange:
    """What to write for one observation group.

    action: "create" (PUT `resource` to its id), "update" (PUT the merged resource), or "noop"
    (the stored Observation already says this: write nothing). `identifier` is MedTech's
    `(system, value)`; `id` is sha256 of `system_value`.
    """

    resource: dict[str, Any]
    action: str
    id: str
    identifier: tuple[str, str]

    @property
    def identifier_query(self) -> str:
        """A search for the Observation by identifier (for stores where MedTech wrote it with a
        server-assigned id, before iomt-fhir PR #259)."""
        return f"identifier={self.identifier[0]}|{self.identifier[1]}"
