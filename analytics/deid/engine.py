"""Applying an anonymizer configuration to resources, with the anonymizer's rule semantics.

Rules run in order; a rule processes the node it matches and all its descendants; a node an earlier rule
touched is not touched again (first match wins, which is why ``keep`` rules come first); what no rule
matches is kept (a deny-list). Nested resources (``contained``, ``Bundle.entry.resource``) are processed
as resources of their own. Every resource a rule changed gets the anonymizer's ``meta.security`` labels.
"""

from __future__ import annotations

import secrets
from typing import Any

from analytics.deid import methods as m
from analytics.deid.config import Config, Rule
from analytics.deid.paths import Tree
from analytics.deid.typed import Location, Node, walk
from analytics.views.fhirpath import FhirPathError, to_json
from common.jsondata import json_copy

_REMOVED = object()
_LABEL_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
_LABELS = {"redact": ("REDACTED", "redacted"), "abstract": ("ABSTRED", "abstracted"),
           "cryptoHash": ("CRYTOHASH", "cryptographic hash function"), "encrypt": ("MASKED", "masked"),
           "perturb": ("PERTURBED", "exact value is replaced with another exact value"),
           "substitute": ("SUBSTITUTED", "exact value is replaced with a predefined one"),
           "generalize": ("GENERALIZED", "exact value is replaced with a general value")}
_PATIENT_REFS = ("subject", "patient", "beneficiary", "individual")


class DeidError(ValueError):
    """A resource the configuration could not process (``processingErrors: raise``)."""


def _parent_loc(loc: Location) -> Location:
    return loc[:-2] if len(loc) >= 2 and isinstance(loc[-1], int) else loc[:-1]


class Anonymizer:
    """One configuration with its keys; empty keys get random ones for this instance only (as the anonymizer)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        p = config.parameters
        self.hash_key = p.get("cryptoHashKey") or secrets.token_hex(32)
        self.shift_key = p.get("dateShiftKey") or secrets.token_hex(32)
        self.encrypt_key = p.get("encryptKey") or ""
        self.scope = p.get("dateShiftScope") or "resource"
        self.fixed_offset = p.get("dateShiftFixedOffsetInDays")
        self.keep_time = bool(p.get("dateShiftKeepTime", False))
        self.partial_dates = bool(p.get("enablePartialDatesForRedact", False))
        self.partial_ages = bool(p.get("enablePartialAgesForRedact", False))
        self.partial_zips = bool(p.get("enablePartialZipCodesForRedact", False))
        self.restricted = list(p.get("restrictedZipCodeTabulationAreas") or [])
        self._by_type: dict[str, list[Rule]] = {}

    def _rules(self, resource_type: str) -> list[Rule]:
        """The rules that can match this type, in order (most rules name another resource type)."""
        if resource_type not in self._by_type:
            self._by_type[resource_type] = [
                r for r in self.config.rules if r.select.root_type in (None, resource_type)]
        return self._by_type[resource_type]

    def anonymize(self, resource: dict[str, Any], *, file_name: str = "", folder: str = "") -> dict[str, Any]:
        doc = json_copy(resource)
        try:
            return self._process(doc, file_name, folder)
        except (ValueError, TypeError, FhirPathError) as exc:
            if self.config.processing_errors == "skip":
                rtype = resource.get("resourceType", "Resource")
                return {"resourceType": rtype, "meta": {"security": [self._label("redact")]}}
            raise DeidError(f"{resource.get('resourceType', 'resource')}: {exc}") from exc

    # ------------------------------------------------------------------ one resource

    def _process(self, doc: dict[str, Any], file_name: str, folder: str) -> dict[str, Any]:
        for key in ("contained",):
            if isinstance(doc.get(key), list):
                doc[key] = [self._process(r, file_name, folder) if isinstance(r, dict) else r for r in doc[key]]
        if doc.get("resourceType") == "Bundle" and isinstance(doc.get("entry"), list):
            for entry in doc["entry"]:
                if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                    entry["resource"] = self._process(entry["resource"], file_name, folder)
        tree = Tree(str(doc.get("resourceType")), walk(doc))
        by_loc = {n.loc: n for n in tree.nodes}
        run = _Run(self, doc, tree, by_loc, self._days(doc, file_name, folder))
        for rule in self._rules(tree.resource_type):
            for node in rule.select(tree):
                run.apply(rule, node)
        if run.labels:
            meta = doc.setdefault("meta", {}) if isinstance(doc.get("meta", {}), dict) else {}
            security = [s for s in meta.get("security", []) if isinstance(s, dict)]
            codes = {s.get("code") for s in security}
            security.extend(self._label(k) for k in sorted(run.labels) if _LABELS[k][0] not in codes)
            meta["security"] = security
        return _prune_object(doc)

    def _label(self, kind: str) -> dict[str, str]:
        code, display = _LABELS[kind]
        return {"system": _LABEL_SYSTEM, "code": code, "display": display}

    def _days(self, doc: dict[str, Any], file_name: str, folder: str) -> int:
        if self.scope == "file":
            scope = file_name
        elif self.scope == "folder":
            scope = folder
        elif self.scope == "patient":
            scope = patient_key(doc) or f"{doc.get('resourceType')}/{doc.get('id')}"
        else:
            scope = f"{doc.get('resourceType')}/{doc.get('id')}"
        return m.shift_days(self.shift_key, scope, self.fixed_offset)


def patient_key(doc: dict[str, Any]) -> str | None:
    """The patient a resource belongs to, for ``dateShiftScope: patient`` (Vigil extension)."""
    if doc.get("resourceType") == "Patient" and doc.get("id"):
        return f"Patient/{doc['id']}"
    for name in _PATIENT_REFS:
        ref = doc.get(name)
        ref = ref.get("reference") if isinstance(ref, dict) else None
        if isinstance(ref, str) and ref.startswith("Patient/"):
            return ref
    return None


class _Run:
    """The state of one resource's processing: which nodes earlier rules touched, and the labels earned."""

    def __init__(self, anon: Anonymizer, doc: dict[str, Any], tree: Tree, by_loc: dict[Location, Node],
                 days: int) -> None:
        self.a, self.doc, self.tree, self.by_loc, self.days = anon, doc, tree, by_loc, days
        self.visited: set[Location] = set()
        self.labels: set[str] = set()

    def _seen(self, loc: Location) -> bool:
        return any(loc[:k] in self.visited for k in range(len(loc) + 1))

    def _set(self, loc: Location, value: Any) -> None:
        target: Any = self.doc
        for step in loc[:-1]:
            target = target[step]
        target[loc[-1]] = value

    def apply(self, rule: Rule, node: Node) -> None:
        if node.nested_resource or (node.loc and self._seen(node.loc)):
            return
        if rule.method == "keep":
            self.visited.add(node.loc)
            return
        if rule.method == "substitute" and not node.primitive:
            if not any(self._seen(d.loc) for d in self.tree.descendants(node)):
                self._set(node.loc, json_copy(rule.settings["replaceWith"]))
                self.visited.add(node.loc)
                self.labels.add("substitute")
            return
        if rule.method == "perturb" and not node.primitive:
            targets = [d for d in self.tree.children.get(node.loc, []) if d.name == "value"]
        else:
            targets = [node] if node.primitive else [d for d in self.tree.descendants(node) if d.primitive]
        for target in targets:
            if target.loc and not self._seen(target.loc) and not target.nested_resource:
                self._primitive(rule, target)
                self.visited.add(target.loc)
        if node.loc:
            self.visited.add(node.loc)

    def _primitive(self, rule: Rule, node: Node) -> None:
        value, method = node.value, rule.method
        parent = self.by_loc.get(_parent_loc(node.loc))
        if method == "redact":
            new, kind = self._redact(node, parent)
        elif method == "dateshift":
            if not isinstance(value, str) or not m.is_date_type(node.type):
                return
            new = m.shift_date(value, self.days, self.a.keep_time, self.a.partial_dates)
            kind = "abstract"
        elif method == "cryptoHash":
            if (
                node.name == "reference"
                and parent is not None
                and parent.type == "Reference"
                and isinstance(value, str)
            ):
                new = m.hash_reference(self.a.hash_key, value)
            else:
                new = m.crypto_hash(self.a.hash_key, _text(value))
            kind = "cryptoHash"
        elif method == "encrypt":
            new, kind = m.encrypt(self.a.encrypt_key, _text(value)), "encrypt"
        elif method == "substitute":
            new, kind = json_copy(rule.settings["replaceWith"]), "substitute"
        elif method == "perturb":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return
            s = rule.settings
            seed = m.crypto_hash(self.a.hash_key, f"{self.doc.get('id')}|{node.loc}|{value}")
            new = m.perturb(float(value), float(s["span"]), s.get("rangeType", "fixed"), s.get("roundTo"), seed,
                            isinstance(value, int))
            kind = "perturb"
        else:  # generalize
            new, kind = self._generalize(rule, value)
        self._set(node.loc, _REMOVED if new is None else new)
        self.labels.add(kind)

    def _redact(self, node: Node, parent: Node | None) -> tuple[Any, str]:
        value = node.value
        if isinstance(value, str) and m.is_date_type(node.type):
            new = m.redact_date(value, self.a.partial_dates)
            return new, ("abstract" if new is not None else "redact")
        if node.name == "postalCode" and isinstance(value, str):
            new = m.redact_postal_code(value, self.a.partial_zips, self.a.restricted)
            return new, ("abstract" if new is not None else "redact")
        if (self.a.partial_ages and node.name == "value" and parent is not None and parent.type == "Age"
                and isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 89):
            return value, "abstract"
        return None, "redact"

    def _generalize(self, rule: Rule, value: Any) -> tuple[Any, str]:
        for condition, output in rule.cases:
            if [to_json(v) for v in condition.nodes(value, {})] == [True]:
                result = [to_json(v) for v in output.nodes(value, {})]
                return (result[0] if result else None), "generalize"
        if rule.settings.get("otherValues", "redact") == "keep":
            return value, "generalize"
        return None, "redact"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(to_json(value)).lower() if isinstance(value, bool) else str(value)


def _prune_object(value: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in value.items():
        if v is _REMOVED:
            continue
        v = _prune(v)
        if v in ({}, []) or v is _REMOVED:
            continue
        out[k] = v
    return out if set(out) - {"resourceType"} else ({} if "resourceType" not in out else out)


def _prune(value: Any) -> Any:
    """Drop removed values and the objects and lists they leave empty (FHIR allows neither)."""
    if isinstance(value, dict):
        return _prune_object(value)
    if isinstance(value, list):
        items = [_prune(v) for v in value if v is not _REMOVED]
        return [v for v in items if v not in ({}, [])]
    return value
