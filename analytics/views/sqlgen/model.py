"""What SQL needs to know about a FHIR element: is it repeated, what type it holds, and is it in the lake.

FHIRPath hides cardinality (``code.coding.code`` flattens lists silently); SQL does not: a repeated element is
an array column (DuckDB/Spark) or a JSON array (Synapse), a single one a struct or a scalar. The R4 element
definitions come from fhir.resources' R4B models (the elements the views read are the same in R4 and R4B).

The lake's own Arrow schema (``_vigil/schema/<Type>.arrow-schema``, written by ``vigil export``) may be laid
over that: an element no exported resource ever had is not a column at all, and SQL naming it would fail to
bind, so the generator turns it into an empty value instead (docs/analytics.md, "Views as SQL").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pyarrow as pa

PRIMITIVE_STRINGS = frozenset({
    "string", "code", "id", "uri", "url", "canonical", "oid", "uuid", "markdown", "base64Binary",
    "date", "dateTime", "instant", "time", "xhtml",
})  # fmt: skip
PRIMITIVE_NUMBERS = frozenset({"decimal", "integer", "positiveInt", "unsignedInt", "integer64"})
_COMPLEX = re.compile(r"abc\.(\w+)Type\b")
_PRIMITIVE = re.compile(r"Annotated\[[\w.]+, (\w+)\(")


class ModelError(ValueError):
    """An element the FHIR R4 model does not have, or that the lake stores differently."""


@dataclass(frozen=True)
class Element:
    name: str  # the JSON name (valueQuantity for a choice)
    type: str  # FHIR type: 'Coding', 'ObservationComponent', 'code', 'decimal', ...
    many: bool
    arrow: pa.DataType | None = None  # the lake's type, when a schema was given
    absent: bool = False  # the lake's schema has no such column: every value is empty

    @property
    def primitive(self) -> bool:
        return self.type in PRIMITIVE_STRINGS or self.type in PRIMITIVE_NUMBERS or self.type == "boolean"


def _primitive_name(annotation: str) -> str | None:
    m = _PRIMITIVE.search(annotation)
    if m:
        name = m.group(1)
        return name[0].lower() + name[1:]
    if re.search(r"\bbool\b", annotation):
        return "boolean"
    if re.search(r"\bstr\b", annotation):
        return "string"
    return None


@lru_cache(maxsize=512)
def _fields(type_name: str) -> dict[str, Any]:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        fields = get_fhir_model_class(type_name).model_fields
    except (KeyError, AttributeError, ValueError) as exc:
        raise ModelError(f"{type_name!r} is not a FHIR R4 type") from exc
    # Python keywords are renamed (Task.for is for_fhir) and keep the JSON name as their alias.
    return {(info.alias or name): info for name, info in fields.items()}


def _describe(owner: str, name: str) -> tuple[str, bool]:
    fields = _fields(owner)
    if name not in fields or name.startswith("_") or name == "fhir_comments":
        raise ModelError(f"{owner} has no element {name!r}")
    annotation = str(fields[name].annotation)
    many = "List[" in annotation
    m = _COMPLEX.search(annotation)
    if m:
        return m.group(1), many
    primitive = _primitive_name(annotation)
    if primitive is None:
        raise ModelError(f"{owner}.{name} has a type the SQL generator does not read ({annotation})")
    return primitive, many


def choice_types(owner: str, name: str) -> dict[str, str]:
    """For a choice element (``value`` of Observation): JSON name by type name, e.g. Quantity -> valueQuantity."""
    out = {}
    for field, info in _fields(owner).items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("one_of_many") == name and not field.startswith("_"):
            out[field[len(name):]] = field
    return out


def element(owner: str, name: str, arrow_owner: pa.DataType | None, with_schema: bool) -> Element:
    """The element ``name`` of type ``owner``; with a schema, also its Arrow type (or that it is absent)."""
    ftype, many = _describe(owner, name)
    if not with_schema:
        return Element(name, ftype, many)
    if arrow_owner is None:
        return Element(name, ftype, many, absent=True)
    index = arrow_owner.get_field_index(name) if pa.types.is_struct(arrow_owner) else -1
    if index < 0:
        return Element(name, ftype, many, absent=True)
    arrow = arrow_owner.field(index).type
    if pa.types.is_null(arrow):
        return Element(name, ftype, many, absent=True)
    is_list = pa.types.is_list(arrow) or pa.types.is_large_list(arrow)
    if is_list != many:
        raise ModelError(
            f"{owner}.{name} is {'repeated' if many else 'single'} in FHIR R4 but the lake stores it as {arrow}"
        )
    return Element(name, ftype, many, arrow=arrow)


def item_type(arrow: pa.DataType | None) -> pa.DataType | None:
    """The Arrow type of one item of a repeated element (the element's own type when single)."""
    if arrow is not None and (pa.types.is_list(arrow) or pa.types.is_large_list(arrow)):
        return arrow.value_type
    return arrow


def schema_struct(schema: pa.Schema) -> pa.DataType:
    """A whole resource's Arrow schema as one struct, so the root is looked up like any element."""
    return pa.struct(list(schema))
