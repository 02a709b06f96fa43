"""Index rows of the embedded store: what a resource's search parameters hold, as comparable values.

The pure functions that turn a resource into index rows (tokens, references, date ranges) from
the element paths of `fhirstore.search_params`, and search values into the same forms (a literal
reference's type and id, a FHIR date's range in microseconds). FHIR R4 search, hl7.org/fhir/R4/search.html.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from typing import Any, NamedTuple

from fhirstore.search_params import COLUMN_PARAMS, Kind, SearchParam, params_for

# ---------------------------------------------------------------- values -> index rows

class Storage(NamedTuple):
    """Where a parameter's index rows live: under its own name, or (an alias) under the rows of
    other parameters, optionally only those pointing at one resource type. Aliases keep writes
    lean: Observation `combo-code` reads the `code` and `component-code` rows, `patient` reads
    the `subject` rows that point at a Patient."""

    names: tuple[str, ...]
    target_type: str | None = None


def storage_for(resource_type: str) -> dict[str, Storage]:
    """How each indexed parameter of a type is stored (`_id`, `_lastUpdated` are columns)."""
    found = _STORAGE.get(resource_type)
    if found is None:
        found = _STORAGE[resource_type] = _plan_storage(params_for(resource_type))
    return found


def indexed_params(resource_type: str) -> list[str]:
    """The parameters that get index rows of their own."""
    return [name for name, where in storage_for(resource_type).items() if where.names == (name,)]


_STORAGE: dict[str, dict[str, Storage]] = {}


def _plan_storage(params: dict[str, SearchParam]) -> dict[str, Storage]:
    plain = {name: p for name, p in params.items()
             if name not in COLUMN_PARAMS and not p.targets and len(p.paths) == 1}
    plan: dict[str, Storage] = {}
    for name, param in params.items():
        if name in COLUMN_PARAMS:
            continue
        same = [o for o, q in plain.items() if q.kind == param.kind and q.paths[0] in param.paths and o != name]
        covered = {plain[o].paths[0] for o in same} == set(param.paths)
        if covered and len(param.targets) <= 1 and (len(same) > 1 or param.targets):
            plan[name] = Storage(tuple(same), param.targets[0] if param.targets else None)
        else:
            plan[name] = Storage((name,))
    return plan


class IndexRows(NamedTuple):
    tokens: set[tuple[str, str, str]]  # (param, code, system); system "" when absent
    refs: set[tuple[str, str, str]]  # (param, target id, target type); type "" when unknown
    dates: set[tuple[str, int, int]]  # (param, low, high) in microseconds since the epoch, inclusive


Extractor = Callable[[dict[str, Any]], IndexRows]
_EXTRACTORS: dict[str, Extractor] = {}


def extractor_for(resource_type: str) -> Extractor:
    """The index-row function of a type, built once. Each element path is walked and decoded once
    even when several parameters share it."""
    found = _EXTRACTORS.get(resource_type)
    if found is None:
        found = _EXTRACTORS[resource_type] = _compile(resource_type)
    return found


class PathStep(NamedTuple):
    """One step of an element path: a child element, optionally only the extensions with `url`."""

    name: str
    url: str | None = None


_STEP = re.compile(r"([A-Za-z][A-Za-z0-9]*)(?:\('([^'\s]+)'\))?(?:\.|$)")


def path_steps(path: str) -> tuple[PathStep, ...]:
    """`a.b.c` or `extension('<url>').valueDateTime` as steps; ValueError names a bad path."""
    steps: list[PathStep] = []
    at = 0
    while at < len(path):
        match = _STEP.match(path, at)
        if match is None or match.end() == at:
            raise ValueError(f"search parameter path {path!r}: cannot read it from position {at}")
        name, url = match.group(1), match.group(2)
        if url is not None and name not in ("extension", "modifierExtension"):
            raise ValueError(f"search parameter path {path!r}: only extension('<url>') selects by url")
        steps.append(PathStep(name, url))
        at = match.end()
    if not steps or path.endswith("."):
        raise ValueError(f"search parameter path {path!r} is empty or ends with '.'")
    return tuple(steps)


def _compile(resource_type: str) -> Extractor:
    params = params_for(resource_type)
    groups: dict[tuple[str, Kind, tuple[str, ...]], list[str]] = {}
    for name in indexed_params(resource_type):
        param = params[name]
        for path in param.paths:
            groups.setdefault((path, param.kind, param.targets), []).append(name)
    plan = tuple((path, path_steps(path), kind, targets, tuple(names))
                 for (path, kind, targets), names in groups.items())

    def extract(resource: dict[str, Any]) -> IndexRows:
        rows = IndexRows(set(), set(), set())
        for path, keys, kind, targets, names in plan:
            if keys[0].name not in resource:  # most parameters are absent from any one resource
                continue
            values = _values(resource, keys)
            if not values:
                continue
            if kind == "token":
                found: list[tuple[str, str]] = []
                for value in values:
                    _tokens(value, found)
                rows.tokens.update([(name, code, system) for name in names for system, code in found])
            elif kind == "reference":
                refs = [_target(value, targets) for value in values]
                rows.refs.update((name, ref[1], ref[0]) for name in names for ref in refs if ref)
            elif kind == "date":
                spans = [_date_span(value, path) for value in values]
                rows.dates.update((name, *span) for name in names for span in spans if span)
            else:
                uris = [u for value in values if isinstance(value, str) for u in _uris(value)]
                rows.tokens.update((name, uri, "") for name in names for uri in uris)
        return rows

    return extract


def _values(node: dict[str, Any], keys: tuple[PathStep, ...]) -> list[Any]:
    """Every value at a path, lists flattened at each step."""
    current: list[Any] = [node]
    for key in keys:
        found: list[Any] = []
        for item in current:
            if isinstance(item, dict):
                child = item.get(key.name)
                if isinstance(child, list):
                    found.extend(child)
                elif child is not None:
                    found.append(child)
        if key.url is not None:
            found = [f for f in found if isinstance(f, dict) and f.get("url") == key.url]
        if not found:
            return found
        current = found
    return current


def _target(value: Any, targets: tuple[str, ...]) -> tuple[str, str] | None:
    text = value.get("reference") if isinstance(value, dict) else None
    target = parse_reference(text) if isinstance(text, str) else None
    if target and targets and target[0] not in targets:
        return None
    return target


def _uris(value: str) -> list[str]:
    """A canonical `url|version` is found by its url alone too."""
    return [value, value.split("|", 1)[0]] if "|" in value else [value]


_CONTACT_POINT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})


def _tokens(value: Any, out: list[tuple[str, str]]) -> None:
    """Append the (system, code) pairs a token-typed value holds."""
    if isinstance(value, dict):
        codings = value.get("coding")
        if codings is not None:  # CodeableConcept
            for coding in codings if isinstance(codings, list) else ():
                code = coding.get("code") if isinstance(coding, dict) else None
                if isinstance(code, str):
                    out.append((coding.get("system") or "", code))
        elif isinstance(value.get("code"), str):  # Coding
            out.append((value.get("system") or "", value["code"]))
        elif isinstance(value.get("value"), str):  # Identifier or ContactPoint
            system = value.get("system")
            # A ContactPoint's system (phone, email, ...) is a kind, not a namespace: match value only.
            if not isinstance(system, str) or system in _CONTACT_POINT_SYSTEMS:
                system = ""
            out.append((system, value["value"]))
    elif isinstance(value, bool):
        out.append(("", "true" if value else "false"))
    elif isinstance(value, str):
        out.append(("", value))


def _date_span(value: Any, path: str) -> tuple[int, int] | None:
    try:
        if isinstance(value, str):
            return parse_date_range(value)
        if isinstance(value, dict):  # Period: an open end is unbounded
            start, end = value.get("start"), value.get("end")
            if start is None and end is None:
                return None
            low = parse_date_range(start)[0] if start is not None else MIN_TIME
            high = parse_date_range(end)[1] if end is not None else MAX_TIME
            return low, high
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return None


# ---------------------------------------------------------------- references

_REFERENCE = re.compile(r"(?:.*/)?([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?")


def parse_reference(text: str) -> tuple[str, str] | None:
    """(type, id) of a literal reference: `Type/id`, an absolute URL ending in it, or a versioned
    form. Anything else (e.g. `urn:uuid:...`) keeps its whole text as id with an empty type;
    contained references (`#x`) are not searchable."""
    if not text or text.startswith("#"):
        return None
    match = _REFERENCE.fullmatch(text)
    if match:
        return match.group(1), match.group(2)
    return "", text


# ---------------------------------------------------------------- dates

US = 1_000_000
MIN_TIME = -(2**62)
MAX_TIME = 2**62
_EPOCH_DAY = date(1970, 1, 1).toordinal()
_DATE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})"
    r"(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def parse_date_range(text: str) -> tuple[int, int]:
    """The instants a FHIR date/dateTime/instant covers, at its precision: `2024` is the whole
    year, `2024-03-05T10:00:00Z` one second. Microseconds since the epoch, both ends inclusive.
    A date without a time is read as a UTC day. A time without an offset is an error (FHIR
    requires one, and guessing a zone would move readings across days)."""
    match = _DATE.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{text!r} is not a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss+zz:zz)")
    year_s, month_s, day_s, hour_s, minute_s, second_s, fraction, zone = match.groups()
    year = int(year_s)
    try:
        if month_s is None:
            return _day_us(year, 1, 1), _day_us(year + 1, 1, 1) - 1
        month = int(month_s)
        if not 1 <= month <= 12:
            raise ValueError("month must be 01-12")
        if day_s is None:
            following = _day_us(year + 1, 1, 1) if month == 12 else _day_us(year, month + 1, 1)
            return _day_us(year, month, 1), following - 1
        start = _day_us(year, month, int(day_s))
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid date: {exc}") from None
    if hour_s is None:
        return start, start + 86_400 * US - 1
    if zone is None:
        raise ValueError(f"{text!r} has a time but no UTC offset (use Z or +hh:mm)")
    hour, minute, second = int(hour_s), int(minute_s), int(second_s or 0)
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"{text!r} has an invalid time of day")
    offset = 0
    if zone != "Z":
        offset = (int(zone[1:3]) * 60 + int(zone[4:6])) * (1 if zone[0] == "+" else -1)
    low = start + ((hour * 60 + minute - offset) * 60 + second) * US
    if second_s is None:
        return low, low + 60 * US - 1
    if not fraction:
        return low, low + US - 1
    digits = fraction[:6]
    step = 10 ** (6 - len(digits))
    low += int(digits) * step
    return low, low + step - 1


def _day_us(year: int, month: int, day: int) -> int:
    return (date(year, month, day).toordinal() - _EPOCH_DAY) * 86_400 * US
