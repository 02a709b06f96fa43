"""Enrollment written as FHIR through the store: Patient, CarePlan (program), Device, Goal, CareTeam.

Every builder validates its input and raises `EnrollmentError` naming the field and the reason, so the
console form and the CLI show the same message. Shapes are the ones the pipeline reads:
CarePlan `instantiatesCanonical` `urn:vigil:program:<id>` (rules/enrollment.py), Device identifier
looked up by ingest (ingest/identity.py), Goal.target detailRange (rules/goals.py), notification
preferences and time zone on the Patient (notifications/preferences.py, common/patient_time.py).
Ending an enrollment sets the CarePlan `completed` with `period.end`: rules, reminders and the billing
count all read only active CarePlans covering the moment they judge.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from common.codes import LOINC, METRICS, UCUM, vigil_system
from common.patient_time import patient_time_zone
from fhirstore.errors import PreconditionFailed, ResourceGone, ResourceNotFound
from fhirstore.paging import search_all
from fhirstore.port import FhirStore
from handlers.alerting import close
from handlers.messaging import Messaging
from notifications.consent import InvalidPhoneNumber, SmsConsentRegistry, normalize_e164
from notifications.preferences import PREFERENCES_EXT, PreferenceError
from notifications.quiet_hours import QuietHours
from rules.model import Ruleset

TIMEZONE_URL = "http://hl7.org/fhir/StructureDefinition/timezone"
CARE_TEAM_ROLES = ("nurse", "physician", "on-call", "care-manager")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_LANG = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


class EnrollmentError(ValueError):
    """Input that cannot become a valid resource; says which field and why (no patient details)."""


def _check_id(value: str, what: str) -> str:
    value = (value or "").strip()
    if not _ID.match(value):
        raise EnrollmentError(f"{what}: {value!r} is not a FHIR id (1-64 of A-Z a-z 0-9 - .)")
    return value


@dataclass(frozen=True)
class NewPatient:
    given: str
    family: str
    birth_date: str
    phone: str = ""
    email: str = ""
    language: str = "en-US"
    time_zone: str = "America/New_York"
    quiet_hours: str = "21:00-08:00"
    sms_consent: bool = False
    mrn: str = ""


def patient_resource(p: NewPatient, patient_id: str | None = None) -> dict[str, Any]:
    if not p.given.strip() or not p.family.strip():
        raise EnrollmentError("name: given and family name are both required")
    try:
        born = date.fromisoformat(p.birth_date.strip())
    except ValueError:
        raise EnrollmentError("birth date: use YYYY-MM-DD") from None
    if born > date.today() or born.year < 1890:
        raise EnrollmentError("birth date: must be in the past (after 1890)")
    try:
        ZoneInfo(p.time_zone.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise EnrollmentError(f"time zone: {p.time_zone!r} is not an IANA zone such as America/Chicago") from None
    try:
        QuietHours.parse(p.quiet_hours)
    except PreferenceError as exc:
        raise EnrollmentError(f"quiet hours: {exc}") from None
    if not _LANG.match(p.language.strip()):
        raise EnrollmentError(f"language: {p.language!r} is not a BCP 47 tag such as en-US or es")
    telecom: list[dict[str, Any]] = []
    if p.phone.strip():
        try:
            telecom.append({"system": "sms", "value": normalize_e164(p.phone.strip()), "rank": 1})
        except InvalidPhoneNumber as exc:
            raise EnrollmentError(f"phone: {exc}") from None
    if p.email.strip():
        if not _EMAIL.match(p.email.strip()):
            raise EnrollmentError("email: not an email address")
        telecom.append({"system": "email", "value": p.email.strip(), "rank": 2})
    if p.sms_consent and not p.phone.strip():
        raise EnrollmentError("SMS consent: needs a phone number")
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": _check_id(patient_id, "patient id") if patient_id else uuid.uuid4().hex[:16],
        "active": True,
        "name": [{"use": "official", "family": p.family.strip(), "given": [p.given.strip()]}],
        "birthDate": born.isoformat(),
        "telecom": telecom,
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": p.language.strip()}]},
                           "preferred": True}],
        "extension": [
            {"url": TIMEZONE_URL, "valueCode": p.time_zone.strip()},
            {"url": PREFERENCES_EXT, "extension": [{"url": "quiet-hours", "valueString": p.quiet_hours.strip()}]},
        ],
    }
    if p.mrn.strip():
        resource["identifier"] = [{"system": vigil_system("mrn"), "value": p.mrn.strip()}]
    return resource


def add_patient(store: FhirStore, consent: SmsConsentRegistry | None, p: NewPatient,
                patient_id: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    resource = patient_resource(p, patient_id)
    written = store.update(resource).resource or resource
    if p.sms_consent and consent is not None:
        consent.opt_in(p.phone.strip(), keyword="console-consent", received_at=now,
                       patient_ref=f"Patient/{written['id']}")
    return written


def _patient(store: FhirStore, patient_id: str) -> dict[str, Any]:
    try:
        return store.read("Patient", _check_id(patient_id, "patient"))
    except (ResourceNotFound, ResourceGone):
        raise EnrollmentError(f"patient: no Patient/{patient_id}") from None


def program_ids(rulesets: list[Ruleset]) -> list[str]:
    return sorted({r.program.id for r in rulesets})


def _local_day_edge(store: FhirStore, patient_id: str, day: date, *, end: bool = False) -> str:
    """`day`'s first (or last) instant in the patient's time zone, with its offset: the rules read a
    bare FHIR date as a UTC day, so a start on "2026-11-20" would begin at 09:00 in Tokyo. The text
    still begins with the local date, which billing reads (DESIGN §5: calendar days are the patient's)."""
    tz = patient_time_zone(_patient(store, patient_id), "UTC")
    edge = datetime.combine(day, time(23, 59, 59, 999000) if end else time(0), tz)
    return edge.isoformat(timespec="milliseconds" if end else "seconds")


def patient_today(store: FhirStore, patient_id: str, now: datetime) -> date:
    """The date it is now where the patient lives: the default start and end of an enrollment (the
    UTC date can be tomorrow there, which would start the enrollment in the future)."""
    return now.astimezone(patient_time_zone(_patient(store, patient_id), "UTC")).date()


def enroll(store: FhirStore, rulesets: list[Ruleset], patient_id: str, program: str, start: date) -> dict[str, Any]:
    _patient(store, patient_id)
    if program not in program_ids(rulesets):
        raise EnrollmentError(f"program: {program!r} is not a loaded program ({', '.join(program_ids(rulesets))})")
    plan = {
        "resourceType": "CarePlan",
        "id": f"{patient_id}-{program}",
        "status": "active",
        "intent": "plan",
        "instantiatesCanonical": [f"urn:vigil:program:{program}"],
        "title": program,
        "subject": {"reference": f"Patient/{patient_id}"},
        "period": {"start": _local_day_edge(store, patient_id, start)},
    }
    return store.update(plan).resource or plan


def end_enrollment(store: FhirStore, patient_id: str, program: str, end: date, *,
                   rulesets: list[Ruleset] | None = None, messaging: Messaging | None = None) -> dict[str, Any]:
    """CarePlan `completed` with `period.end`; the program's open alerts for the patient stop too:
    their Tasks are cancelled (no further escalation) and, with `messaging`, the episodes closed."""
    try:
        plan = store.read("CarePlan", f"{_check_id(patient_id, 'patient')}-{program}")
    except (ResourceNotFound, ResourceGone):
        raise EnrollmentError(f"program: the patient is not enrolled in {program!r}") from None
    plan["status"] = "completed"
    plan["period"] = {**(plan.get("period") or {}), "end": _local_day_edge(store, patient_id, end, end=True)}
    written = store.update(plan, if_match=plan["meta"]["versionId"]).resource or plan
    rule_ids = {r.id for rs in rulesets or [] if rs.program.id == program for r in rs.rules}
    for issue in search_all(store, "DetectedIssue", {"patient": f"Patient/{patient_id}", "status": "preliminary"}):
        codes = {c.get("code") for c in (issue.get("code") or {}).get("coding") or []}
        if not codes & rule_ids:
            continue
        _cancel_task(store, issue["id"])
        if messaging is not None:
            close(messaging, issue, messaging.clock.now(), f"enrollment in {program} ended", code="enrollment-ended")
    return written


def _cancel_task(store: FhirStore, task_id: str) -> None:
    for _ in range(3):  # a sweep may write the Task between our read and write
        try:
            task = store.read("Task", task_id)
        except (ResourceNotFound, ResourceGone):
            return
        if task.get("status") not in ("requested", "received", "ready"):
            return  # acknowledged or done: its chain is over already
        task["status"] = "cancelled"
        task["statusReason"] = {"text": "enrollment ended"}
        try:
            store.update(task, if_match=task["meta"]["versionId"])
            return
        except PreconditionFailed:
            continue


def set_override(store: FhirStore, rulesets: list[Ruleset], patient_id: str, program: str, rule_id: str, *,
                 param: str = "", value: str = "", disabled: bool = False, clear: bool = False,
                 now: datetime | None = None) -> dict[str, Any]:
    """A per-patient rule override on the program's CarePlan (the `rule-override` extension the
    pipeline reads, rules/enrollment.py): disable `rule_id`, or set one of its params to `value`
    ("150 mm[Hg]", "3 [lb_av]"), or with `clear` remove the rule's overrides. It replaces an earlier
    override of the same rule and param; it is checked by the pipeline's own reading of overrides,
    so what is refused here would be ignored there."""
    from rules.enrollment import OVERRIDE_URL, override_extension, overrides_from_careplans
    from rules.quantity import Quantity

    try:
        plan = store.read("CarePlan", f"{_check_id(patient_id, 'patient')}-{program}")
    except (ResourceNotFound, ResourceGone):
        raise EnrollmentError(f"program: the patient is not enrolled in {program!r}") from None
    ruleset = next((rs for rs in rulesets if rs.program.id == program), None)
    rule = next((r for r in ruleset.rules if r.id == rule_id), None) if ruleset else None
    if ruleset is None or rule is None:
        known = ", ".join(r.id for r in ruleset.rules) if ruleset else "none"
        raise EnrollmentError(f"rule: {rule_id!r} is not a rule of {program!r} ({known})")

    def names(ext: dict[str, Any]) -> tuple[str | None, str | None]:
        parts = {p.get("url"): p for p in ext.get("extension") or []}
        return (parts.get("rule") or {}).get("valueString"), (parts.get("param") or {}).get("valueString")

    kept = [e for e in plan.get("extension") or [] if e.get("url") != OVERRIDE_URL
            or names(e)[0] != rule_id or (not clear and not disabled and names(e)[1] not in (None, param))]
    if not clear:
        if disabled:
            ext = override_extension(rule_id, disabled=True)
        else:
            if param not in rule.params:
                raise EnrollmentError(f"param: {param!r} is not a param of {rule_id} "
                                      f"({', '.join(sorted(rule.params)) or 'it has none'})")
            try:
                quantity = Quantity.parse(value.strip())
            except ValueError as exc:
                raise EnrollmentError(f"value: {exc}") from None
            ext = override_extension(rule_id, param=param, value=quantity)
        kept.append(ext)
    plan["extension"] = kept
    if not plan["extension"]:
        del plan["extension"]
    # Judged as if in force now, whatever the plan's dates: a bad override must not wait to be ignored.
    probe = {**plan, "status": "active", "period": {}}
    _, problems = overrides_from_careplans([probe], [ruleset], now or datetime.now(UTC))
    if problems:
        raise EnrollmentError(f"override: {problems[0]}")
    return store.update(plan, if_match=plan["meta"]["versionId"]).resource or plan


def register_device(store: FhirStore, patient_id: str, identifier: str, kind: str = "") -> dict[str, Any]:
    _patient(store, patient_id)
    device_id = _check_id(identifier, "device identifier")
    found = store.search("Device", {"identifier": device_id})
    for other in found.resources:
        owner = (other.get("patient") or {}).get("reference")
        if owner and owner != f"Patient/{patient_id}" and other.get("status") == "active":
            raise EnrollmentError("device identifier: already registered to another patient")
    device: dict[str, Any] = {"resourceType": "Device", "id": device_id, "identifier": [{"value": device_id}],
                              "status": "active", "patient": {"reference": f"Patient/{patient_id}"}}
    if kind.strip():
        device["type"] = {"text": kind.strip()}
    return store.update(device).resource or device


def set_goal(store: FhirStore, patient_id: str, metric: str, low: float | None, high: float | None,
             start: date) -> dict[str, Any]:
    _patient(store, patient_id)
    if metric not in METRICS:
        raise EnrollmentError(f"metric: {metric!r} is unknown (e.g. systolic_bp, glucose, body_weight)")
    if low is None and high is None:
        raise EnrollmentError("goal: give a low bound, a high bound or both")
    if low is not None and high is not None and low >= high:
        raise EnrollmentError("goal: the low bound must be below the high bound")
    m = METRICS[metric]
    target_range = {k: {"value": v, "system": UCUM, "code": m.unit} for k, v in (("low", low), ("high", high))
                    if v is not None}
    goal = {
        "resourceType": "Goal",
        "id": f"{patient_id}-{metric.replace('_', '-')}",
        "lifecycleStatus": "active",
        "description": {"text": f"{m.display} goal"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "startDate": start.isoformat(),
        "target": [{"measure": {"coding": [{"system": LOINC, "code": m.loinc}]}, "detailRange": target_range}],
    }
    return store.update(goal).resource or goal


def assign_care_team(store: FhirStore, patient_id: str, members: dict[str, str]) -> dict[str, Any]:
    """`members`: role -> Practitioner id. Unknown roles or practitioners are refused."""
    _patient(store, patient_id)
    participants = []
    for role, practitioner in members.items():
        if not practitioner:
            continue
        if role not in CARE_TEAM_ROLES:
            raise EnrollmentError(f"care team: role {role!r} is not one of {', '.join(CARE_TEAM_ROLES)}")
        try:
            store.read("Practitioner", _check_id(practitioner, f"care team {role}"))
        except (ResourceNotFound, ResourceGone):
            raise EnrollmentError(f"care team {role}: no Practitioner/{practitioner}") from None
        participants.append({"role": [{"coding": [{"code": role}]}],
                             "member": {"reference": f"Practitioner/{practitioner}"}})
    if not participants:
        raise EnrollmentError("care team: name at least one member")
    team = {"resourceType": "CareTeam", "id": f"{patient_id}-team", "status": "active",
            "subject": {"reference": f"Patient/{patient_id}"}, "participant": participants}
    return store.update(team).resource or team


def ensure_practitioner(store: FhirStore, practitioner_id: str, display: str) -> None:
    try:
        store.read("Practitioner", practitioner_id)
    except (ResourceNotFound, ResourceGone):
        store.update({"resourceType": "Practitioner", "id": practitioner_id, "active": True,
                      "name": [{"text": display}]})
