"""A FHIR resource as a list of typed nodes, for rules such as ``nodesByType('HumanName')``.

Types come from fhirpathpy's R4 model (``path2Type``, derived from the FHIR StructureDefinitions): the type of
``Observation.code`` is ``CodeableConcept``, of ``CodeableConcept.coding`` ``Coding``, and so on; backbone
elements (``Observation.component``) are looked up by their full path. An element the model does not know
(a profile's addition) gets type ``None`` and is still a node, so name-based and path rules reach it.
Nested resources (``contained``, ``Bundle.entry.resource``) are not walked into: they are processed as
resources of their own, as the anonymizer does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhirpathpy.models import models

_MODEL = models["r4"]
_PATH2TYPE: dict[str, str] = _MODEL["path2Type"]
_TYPE2PARENT: dict[str, str] = _MODEL["type2Parent"]
_ELSEWHERE: dict[str, str] = _MODEL["pathsDefinedElsewhere"]
_PREFIXES = {k.rsplit(".", 1)[0] for k in _PATH2TYPE}
PRIMITIVE_SYSTEM = {"System.String": "string", "System.Boolean": "boolean", "System.Integer": "integer",
                    "System.Decimal": "decimal", "System.DateTime": "dateTime", "System.Time": "time"}

Location = tuple[str | int, ...]


@dataclass
class Node:
    loc: Location  # keys and list indexes from the resource root
    name: str  # the JSON property name (valueQuantity, not value)
    type: str | None  # FHIR type name: HumanName, date, string, ... (None: unknown element)
    lookup: str | None  # where this node's children are looked up in the model
    value: Any
    nested_resource: bool = False

    @property
    def primitive(self) -> bool:
        return not isinstance(self.value, (dict, list))


def _child_type(lookup: str | None, key: str) -> tuple[str | None, str | None]:
    """(type, lookup for its children) of property ``key`` under a node looked up at ``lookup``."""
    if key.startswith("_"):  # a primitive's id/extension part
        return "Element", "Element"
    probe = lookup
    while probe:
        path = f"{probe}.{key}"
        t = _PATH2TYPE.get(path)
        if t is not None:
            t = PRIMITIVE_SYSTEM.get(t, t)
            return t, (t if t[:1].isupper() else None)
        if path in _ELSEWHERE:
            return "BackboneElement", _ELSEWHERE[path]
        if path in _PREFIXES:
            return "BackboneElement", path
        # Inherited elements: Age.value is Quantity.value, Patient.id is Resource.id.
        probe = _TYPE2PARENT.get(probe) or ("Element" if probe not in ("Element", "Resource") else None)
    for base in ("Element", "DomainResource", "Resource"):
        t = _PATH2TYPE.get(f"{base}.{key}")
        if t is not None:
            t = PRIMITIVE_SYSTEM.get(t, t)
            return t, (t if t[:1].isupper() else None)
    return None, None


def walk(resource: dict[str, Any]) -> list[Node]:
    """Every node of ``resource`` below its root, depth first, with its FHIR type where the model knows it."""
    out: list[Node] = []
    root_type = resource.get("resourceType")

    def visit(value: Any, loc: Location, name: str, ftype: str | None, lookup: str | None) -> None:
        if isinstance(value, list):
            for i, item in enumerate(value):
                visit(item, (*loc, i), name, ftype, lookup)
            return
        if ftype == "Resource" or (isinstance(value, dict) and "resourceType" in value and loc):
            out.append(Node(loc, name, value.get("resourceType") if isinstance(value, dict) else ftype, None, value,
                            nested_resource=True))
            return
        out.append(Node(loc, name, ftype, lookup, value))
        if isinstance(value, dict):
            for key, child in value.items():
                t, lk = _child_type(lookup, key)
                visit(child, (*loc, key), key, t, lk)

    for key, child in resource.items():
        if key == "resourceType":
            continue
        t, lk = _child_type(root_type, key)
        visit(child, (key,), key, t, lk)
    return out


def is_a(ftype: str | None, wanted: str) -> bool:
    """``ftype`` is ``wanted`` or derives from it (Age is a Quantity)."""
    while ftype:
        if ftype.lower() == wanted.lower():
            return True
        ftype = _TYPE2PARENT.get(ftype)
    return False


def choice_match(name: str, step: str) -> bool:
    """``valueQuantity`` answers to ``value`` (a FHIR choice element), ``value`` to itself."""
    return name == step or (name.startswith(step) and len(name) > len(step) and name[len(step)].isupper())
