"""Search parameters of the embedded store: which FHIR R4 elements each parameter searches, per type.

This is data: `fhirstore/index_rows.py` turns a resource into index rows from these paths, and
search values into comparable forms. Names and element paths follow the R4 search parameter registry
(hl7.org/fhir/R4/searchparameter-registry.html); paths are dotted element names, lists are walked.

Kinds: token (code, Coding, CodeableConcept, Identifier, ContactPoint, boolean), reference,
date (date, dateTime, instant, Period as a range), uri (exact match; canonical `url|version` also
matches its bare url).

A path step may select extensions by url, as FHIRPath's `extension('<url>')` does:
`extension('urn:vigil:escalation-due').valueDateTime` (Task `escalation-due`, Vigil's own).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from common.codes import vigil_system

Kind = Literal["token", "reference", "date", "uri"]


class SearchParam(NamedTuple):
    kind: Kind
    paths: tuple[str, ...]
    targets: tuple[str, ...] = ()  # reference: index only references to these resource types


# `_id` and `_lastUpdated` are answered from the resource table, not from index rows.
COLUMN_PARAMS = frozenset({"_id", "_lastUpdated"})

COMMON: dict[str, SearchParam] = {
    "_id": SearchParam("token", ("id",)),
    "_lastUpdated": SearchParam("date", ("meta.lastUpdated",)),
    "identifier": SearchParam("token", ("identifier",)),
}


def _subject(path: str = "subject") -> dict[str, SearchParam]:
    """`subject` (any type) and `patient` (the same element when it points at a Patient)."""
    return {
        "subject": SearchParam("reference", (path,)),
        "patient": SearchParam("reference", (path,), ("Patient",)),
    }


def _ref(*paths: str) -> SearchParam:
    return SearchParam("reference", paths)


def _tok(*paths: str) -> SearchParam:
    return SearchParam("token", paths)


def _date(*paths: str) -> SearchParam:
    return SearchParam("date", paths)


# Vigil's own search parameter (not in the R4 registry): when the escalation sweep must next act on
# a Task, which `notifications.escalation` keeps in this extension. `escalation-due=le<now>` lets
# the sweep that runs every minute read only the Tasks that are due instead of every open Task.
# On a FHIR server it is a custom SearchParameter with expression
# Task.extension('urn:vigil:escalation-due').value (type date).
ESCALATION_DUE_PATH = f"extension('{vigil_system('escalation-due')}').valueDateTime"

REGISTRY: dict[str, dict[str, SearchParam]] = {
    "Observation": {
        **_subject(),
        "code": _tok("code"),
        "component-code": _tok("component.code"),
        "combo-code": _tok("code", "component.code"),
        "date": _date("effectiveDateTime", "effectivePeriod", "effectiveInstant"),
        "status": _tok("status"),
        "category": _tok("category"),
        "device": _ref("device"),
        "encounter": _ref("encounter"),
        "derived-from": _ref("derivedFrom"),
        "based-on": _ref("basedOn"),
        "has-member": _ref("hasMember"),
        "performer": _ref("performer"),
    },
    "Patient": {
        "active": _tok("active"),
        "telecom": _tok("telecom"),
        "general-practitioner": _ref("generalPractitioner"),
        "organization": _ref("managingOrganization"),
    },
    "Device": {
        "patient": _ref("patient"),
        "status": _tok("status"),
        "type": _tok("type"),
        "parent": _ref("parent"),
    },
    "DetectedIssue": {
        "patient": _ref("patient"),
        "code": _tok("code"),
        "identified": _date("identifiedDateTime", "identifiedPeriod"),
        "status": _tok("status"),
        "implicated": _ref("implicated"),
        "author": _ref("author"),
    },
    "Task": {
        **_subject("for"),
        "status": _tok("status"),
        "business-status": _tok("businessStatus"),
        "code": _tok("code"),
        "priority": _tok("priority"),
        "focus": _ref("focus"),
        "owner": _ref("owner"),
        "based-on": _ref("basedOn"),
        "part-of": _ref("partOf"),
        "group-identifier": _tok("groupIdentifier"),
        "authored-on": _date("authoredOn"),
        "modified": _date("lastModified"),
        "period": _date("executionPeriod"),
        # Vigil's own, last: a type's primary date (its first date parameter) stays an R4 one.
        "escalation-due": _date(ESCALATION_DUE_PATH),
    },
    "Flag": {
        **_subject(),
        "status": _tok("status"),
        "code": _tok("code"),
        "category": _tok("category"),
        "date": _date("period"),
        "author": _ref("author"),
    },
    "Communication": {
        **_subject(),
        "status": _tok("status"),
        "recipient": _ref("recipient"),
        "sender": _ref("sender"),
        "based-on": _ref("basedOn"),
        "part-of": _ref("partOf"),
        "medium": _tok("medium"),
        "category": _tok("category"),
        "sent": _date("sent"),
        "received": _date("received"),
    },
    "CommunicationRequest": {
        **_subject(),
        "status": _tok("status"),
        "category": _tok("category"),
        "recipient": _ref("recipient"),
        "based-on": _ref("basedOn"),
    },
    "CarePlan": {
        **_subject(),
        "status": _tok("status"),
        "intent": _tok("intent"),
        "category": _tok("category"),
        "instantiates-canonical": SearchParam("uri", ("instantiatesCanonical",)),
        "date": _date("period"),
        "care-team": _ref("careTeam"),
        "goal": _ref("goal"),
    },
    "Goal": {
        **_subject(),
        "lifecycle-status": _tok("lifecycleStatus"),
        "achievement-status": _tok("achievementStatus"),
        "category": _tok("category"),
    },
    "CareTeam": {
        **_subject(),
        "status": _tok("status"),
        "category": _tok("category"),
        "participant": _ref("participant.member"),
    },
    "Practitioner": {
        "active": _tok("active"),
        "telecom": _tok("telecom"),
    },
    "PractitionerRole": {
        "practitioner": _ref("practitioner"),
        "organization": _ref("organization"),
        "role": _tok("code"),
        "active": _tok("active"),
        "telecom": _tok("telecom"),
    },
    "Encounter": {
        **_subject(),
        "status": _tok("status"),
        "class": _tok("class"),
        "date": _date("period"),
    },
    "Questionnaire": {
        "url": SearchParam("uri", ("url",)),
        "status": _tok("status"),
        "version": _tok("version"),
    },
    "QuestionnaireResponse": {
        **_subject(),
        "questionnaire": SearchParam("uri", ("questionnaire",)),
        "status": _tok("status"),
        "authored": _date("authored"),
        "author": _ref("author"),
        "based-on": _ref("basedOn"),
    },
    "Consent": {
        "patient": _ref("patient"),
        "status": _tok("status"),
        "category": _tok("category"),
        "scope": _tok("scope"),
        "date": _date("dateTime"),
        "period": _date("provision.period"),
    },
}


def primary_date(resource_type: str) -> str | None:
    """A type's first date parameter (Observation: `date`). Its upper end is kept on every
    reference row of the resource, so "this subject's resources in a time window" is one index
    range instead of a walk through the subject's whole history. It must name single-valued
    elements (a choice such as effective[x] counts as one): the store rejects a second value."""
    return next((name for name, p in REGISTRY.get(resource_type, {}).items() if p.kind == "date"), None)


# Tokens with few distinct values make poor drivers for a query: prefer any other parameter.
LOW_SELECTIVITY = frozenset({
    "status", "active", "category", "priority", "intent", "class", "lifecycle-status",
    "achievement-status", "business-status", "scope", "medium",
})


def params_for(resource_type: str) -> dict[str, SearchParam]:
    """Every search parameter of a type (types not in the registry get the common ones)."""
    return {**COMMON, **REGISTRY.get(resource_type, {})}
