"""A check that de-identified output carries none of the input's direct identifiers.

It collects, from the input, what Safe Harbor names (45 CFR 164.514(b)(2)(i)): names, street and city,
phone/fax/email values, identifier values (MRNs, serials), resource ids, birth and death dates, and the exact
instants of dated events, then looks for each in the output's text. Findings are counts per kind, never
the values (they are PHI).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from analytics.deid.typed import walk

_SHORT = 5  # shorter values are matched as whole words only (an id "12" occurs in many hashes)
_BIRTH = ("birthDate", "deceasedDateTime", "born", "deceasedDate")


def _kind(node_type: str | None, name: str, parent_type: str | None) -> str | None:
    if parent_type == "HumanName" and name in ("family", "given", "text"):
        return "name"
    if parent_type == "ContactPoint" and name == "value":
        return "telecom"
    if parent_type == "Address" and name in ("line", "city", "text", "district"):
        return "address"
    if parent_type == "Identifier" and name == "value":
        return "identifier"
    if name in ("serialNumber", "lotNumber", "distinctIdentifier", "deviceName"):
        return "device identifier"
    if name in _BIRTH:
        return "birth or death date"
    if node_type in ("dateTime", "instant") and name != "lastUpdated":
        return "exact instant"
    return None


def collect(resources: Iterable[dict[str, Any]]) -> dict[str, str]:
    """value -> kind, for the identifiers found in ``resources``."""
    found: dict[str, str] = {}
    for resource in resources:
        if isinstance(resource.get("id"), str):
            found[resource["id"]] = "resource id"
        nodes = walk(resource)
        types = {n.loc: n.type for n in nodes}
        for n in nodes:
            if not isinstance(n.value, str) or not n.value.strip():
                continue
            parent = n.loc[:-2] if isinstance(n.loc[-1], int) else n.loc[:-1]
            kind = _kind(n.type, n.name, types.get(parent) if parent else None)
            if kind == "exact instant" and "T" not in n.value:
                continue  # a date alone is not an instant; dates are checked through birth/death
            if kind:
                found[n.value] = kind
    return found


def leaks(phi: dict[str, str], output: Iterable[dict[str, Any]]) -> Counter[str]:
    """How many of the collected values, per kind, appear in ``output``."""
    text = "\n".join(json.dumps(r, ensure_ascii=False) for r in output)
    counts: Counter[str] = Counter()
    for value, kind in phi.items():
        if len(value) < _SHORT:
            if re.search(rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])", text):
                counts[kind] += 1
        elif value in text:
            counts[kind] += 1
    return counts
