"""The search compiler's clauses: one AND-ed FHIR search parameter as SQL over the index tables.

A clause is both a filter over the outer resource row `r` and, when its index can produce candidate
rows, a driver condition over that index table (alias `x`); `query.Query.assemble` picks the driver.
Value syntax follows FHIR R4 search (https://hl7.org/fhir/R4/search.html): `,` for OR, `|` between
system and code, `\\` to escape either.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from fhirstore.errors import InvalidSearch
from fhirstore.index_rows import parse_date_range, parse_reference
from fhirstore.search_params import COLUMN_PARAMS, LOW_SELECTIVITY, SearchParam

_DATE_PREFIXES = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"})


class Bounds(NamedTuple):
    """Necessary conditions a date clause puts on a matching range [lo, hi] (None: none)."""

    hi_min: int | None  # hi >= hi_min
    hi_max: int | None  # hi <= hi_max
    lo_max: int | None  # lo <= lo_max, so hi <= lo_max + the parameter's widest range


class Rows(NamedTuple):
    """Where one parameter's index rows are: its parameter ids and, for an alias, its one target type."""

    pids: tuple[int, ...]
    target_type: str | None = None


NO_ROWS = Rows((-1,))


@dataclass
class Clause:
    """One AND-ed search parameter, as a filter over the outer row `r` and, when its index can
    produce candidate rows, as a driver condition over that index table (alias `x`)."""

    name: str
    rank: int  # lower drives the query better; 9: never drives
    filter: str
    filter_args: list[Any]
    table: str | None = None
    where: str = ""
    where_args: list[Any] = field(default_factory=list)
    bounds: Bounds | None = None  # date clauses: what every match's range must satisfy


def clause(resource_type: str, name: str, modifier: str, value: str, param: SearchParam, rows: Rows) -> Clause:
    table = {"reference": "ref", "date": "dt"}.get(param.kind, "tok")
    own = f"x.pid IN ({marks(len(rows.pids))})" + (" AND x.target_type = ?" if rows.target_type else "")
    own_args: list[Any] = [*rows.pids, *([rows.target_type] if rows.target_type else [])]
    if modifier == "missing":
        if value not in ("true", "false"):
            raise InvalidSearch(f"{name}:missing takes true or false, not {value!r}")
        if name in COLUMN_PARAMS:  # every resource has an id and a lastUpdated
            return Clause(name, 9, "0" if value == "true" else "1", [])
        exists = f"EXISTS (SELECT 1 FROM {table} x WHERE x.rid = r.rid AND {own})"
        return Clause(name, 9, f"NOT {exists}" if value == "true" else exists, own_args)
    if name == "_id":
        no_modifier(resource_type, name, modifier)
        ids = [unescape(v) for v in split(value, ",")]
        holes = marks(len(ids))
        return Clause(name, 0, f"r.id IN ({holes})", ids, "resources",
                      f"x.type = ? AND x.id IN ({holes})", [resource_type, *ids])
    if name == "_lastUpdated":
        no_modifier(resource_type, name, modifier)
        # lastUpdated is read as the instant it names (its sub-millisecond range does not matter for
        # searches at millisecond precision), which lets the (type, updated) index serve ranges.
        cond, args, _ = date_condition(name, value, "x.updated", "x.updated")
        return Clause(name, 4, cond.replace("x.", "r."), args, "resources", f"x.type = ? AND ({cond})",
                      [resource_type, *args])
    bounds = None
    if param.kind == "date":
        no_modifier(resource_type, name, modifier)
        cond, args, bounds = date_condition(name, value, "x.lo", "x.hi")
        rank = 4
    elif param.kind == "reference":
        cond, args = reference_condition(resource_type, name, modifier, value)
        rank = 1
    elif param.kind == "uri":
        no_modifier(resource_type, name, modifier)
        values = [unescape(v) for v in split(value, ",")]
        cond, args = f"x.code IN ({marks(len(values))})", values
        rank = 1
    else:
        if modifier not in ("", "not"):
            raise InvalidSearch(f"modifier ':{modifier}' is not supported on token parameter '{name}' "
                                f"of {resource_type} (supported: :not, :missing)")
        cond, args = token_condition(value)
        rank = 5 if name in LOW_SELECTIVITY else 1 if name == "identifier" else 2
    # As a filter, the condition must probe this resource's own rows through the primary key
    # (rid, pid, ...). Unary + on the value columns stops SQLite from preferring a value index
    # and scanning every row with that value (or in that date range) instead.
    probe = re.sub(r"\bx\.", "+x.", cond)
    exists = f"EXISTS (SELECT 1 FROM {table} x WHERE x.rid = r.rid AND {own} AND ({probe}))"
    if modifier == "not":
        return Clause(name, 9, f"NOT {exists}", [*own_args, *args])
    return Clause(name, rank, exists, [*own_args, *args], table, f"{own} AND ({cond})", [*own_args, *args],
                  bounds)


def hi_terms(bounds: list[Bounds], span_pids: Sequence[int]) -> list[tuple[str, list[Any]]]:
    """Conditions on `x.hi` implied by AND-ed date clauses, for a driver reading an index on hi."""
    hi_min = max((b.hi_min for b in bounds if b.hi_min is not None), default=None)
    hi_max = min((b.hi_max for b in bounds if b.hi_max is not None), default=None)
    lo_max = min((b.lo_max for b in bounds if b.lo_max is not None), default=None)
    terms: list[tuple[str, list[Any]]] = []
    if hi_min is not None:
        terms.append(("x.hi >= ?", [hi_min]))
    if hi_max is not None:
        terms.append(("x.hi <= ?", [hi_max]))
    if lo_max is not None and span_pids:
        widest = f"(SELECT COALESCE(MAX(span), 0) FROM spans WHERE pid IN ({marks(len(span_pids))}))"
        terms.append((f"x.hi <= ? + {widest}", [lo_max, *span_pids]))
    return terms


def token_condition(value: str) -> tuple[str, list[Any]]:
    codes: list[str] = []
    terms: list[str] = []
    args: list[Any] = []
    for item in split(value, ","):
        parts = split(item, "|", 1)
        if len(parts) == 1:
            codes.append(unescape(item))
            continue
        system, code = unescape(parts[0]), unescape(parts[1])
        if system and code:
            terms.append("(x.code = ? AND x.system = ?)")
            args += [code, system]
        elif code:
            terms.append("(x.code = ? AND x.system = '')")
            args.append(code)
        elif system:
            terms.append("x.system = ?")
            args.append(system)
        else:
            raise InvalidSearch(f"token value {item!r} has neither a system nor a code")
    if codes:
        terms.insert(0, f"x.code IN ({marks(len(codes))})")
        args = [*codes, *args]
    return " OR ".join(terms), args


def reference_condition(resource_type: str, name: str, modifier: str, value: str) -> tuple[str, list[Any]]:
    if modifier and not re.fullmatch(r"[A-Z][A-Za-z]+", modifier):
        raise InvalidSearch(f"modifier ':{modifier}' is not supported on reference parameter '{name}' "
                            f"of {resource_type} (supported: :[type], :missing)")
    terms, args = [], []
    for item in split(value, ","):
        target = parse_reference(unescape(item))
        if target is None:
            raise InvalidSearch(f"{name}={item!r} is not a reference (use Type/id or id)")
        kind, id = target
        if modifier and kind and kind != modifier:
            raise InvalidSearch(f"{name}:{modifier}={item} names another resource type")
        kind = kind or modifier
        if kind:
            terms.append("(x.target_id = ? AND x.target_type = ?)")
            args += [id, kind]
        else:
            terms.append("x.target_id = ?")
            args.append(id)
    return " OR ".join(terms), args


def date_condition(name: str, value: str, lo: str, hi: str) -> tuple[str, list[Any], Bounds]:
    """FHIR date search range semantics (R4 search §3.1.1.4.1): the target's [lo, hi] range against
    the search value's range [slo, shi], plus the bounds every match satisfies. The leading
    `hi >= ?` / `lo <= ?` of ge/le are implied by the rest; they are spelled out so that an index
    on hi or lo can serve the search."""
    terms: list[str] = []
    args: list[Any] = []
    bounds: list[Bounds] = []
    for item in split(value, ","):
        prefix, text = ("eq", item)
        if item[:2].isalpha():
            prefix, text = item[:2], item[2:]
            if prefix not in _DATE_PREFIXES:
                raise InvalidSearch(f"{name}: unsupported date prefix '{prefix}' in {item!r} "
                                    f"(supported: {', '.join(sorted(_DATE_PREFIXES))})")
        # An unencoded '+' of a UTC offset arrives as a space after form decoding.
        text = re.sub(r"(T[\d:.]+) (\d{2}:\d{2})$", r"\1+\2", text)
        try:
            slo, shi = parse_date_range(text)
        except ValueError as exc:
            raise InvalidSearch(f"search parameter '{name}': {exc}") from None
        contained = f"({lo} >= ? AND {hi} <= ?)"
        term, term_args, bound = {
            "eq": (contained, [slo, shi], Bounds(slo, shi, shi)),
            "ne": (f"NOT {contained}", [slo, shi], Bounds(None, None, None)),
            "gt": (f"{hi} > ?", [shi], Bounds(shi + 1, None, None)),
            "lt": (f"{lo} < ?", [slo], Bounds(None, None, slo - 1)),
            "ge": (f"({hi} >= ? AND ({hi} > ? OR {contained}))", [slo, shi, slo, shi], Bounds(slo, None, None)),
            "le": (f"({lo} <= ? AND ({lo} < ? OR {contained}))", [shi, slo, slo, shi], Bounds(None, None, shi)),
            "sa": (f"{lo} > ?", [shi], Bounds(shi + 1, None, None)),
            "eb": (f"{hi} < ?", [slo], Bounds(None, slo - 1, slo - 1)),
        }[prefix]
        terms.append(term)
        args += term_args
        bounds.append(bound)
    # OR of values: a bound holds only if every value has one, and then the loosest one.
    either = Bounds(*(None if None in column else (min if i == 0 else max)(column)
                       for i, column in enumerate(zip(*bounds, strict=True))))
    return " OR ".join(terms), args, either


def no_modifier(resource_type: str, name: str, modifier: str) -> None:
    if modifier:
        raise InvalidSearch(f"modifier ':{modifier}' is not supported on '{name}' of {resource_type} "
                            "(supported: :missing)")


def non_negative(name: str, value: str) -> int:
    if not value.isdigit():
        raise InvalidSearch(f"{name} must be a non-negative integer, not {value!r}")
    return int(value)


def split(text: str, sep: str, maxsplit: int = -1) -> list[str]:
    """Split on `sep` unless escaped with a backslash (FHIR search escaping)."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            current.append(text[i:i + 2])
            i += 2
            continue
        if char == sep and (maxsplit < 0 or len(parts) < maxsplit):
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


def unescape(text: str) -> str:
    return re.sub(r"\\([\\,|$])", r"\1", text) if "\\" in text else text


def marks(n: int) -> str:
    return ", ".join("?" * n)

