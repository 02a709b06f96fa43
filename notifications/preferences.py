"""Who gets a message, on which channels in which order, in which language, and when.

Patients: `Patient.telecom` (rank, use, system sms/phone/email), `Patient.communication`
(preferred language), a time-zone extension and Vigil's notification-preferences extension
(channel order, quiet hours, locale). Staff: the patient's active `CareTeam` participants whose role
matches (nurse, physician, on-call, ...), reached through `PractitionerRole.telecom` then
`Practitioner.telecom`; a role nobody on the care team holds falls back to an active
`PractitionerRole` with that role (an organization-wide on-call roster).

Time: quiet hours (`notifications.quiet_hours`) in the recipient's zone. Patient reminders wait
for the end of quiet hours; escalations to staff never wait (DESIGN §7).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from common.clock import parse_instant
from common.codes import vigil_system
from common.patient_time import patient_time_zone_name
from fhirstore.errors import InvalidSearch, ResourceGone, ResourceNotFound
from fhirstore.port import FhirStore
from notifications.consent import InvalidPhoneNumber, normalize_e164
from notifications.quiet_hours import DEFAULT_QUIET_HOURS, QuietHours, next_allowed_send, zone
from notifications.quiet_hours import PreferenceError as PreferenceError  # re-exported: callers catch it here

log = logging.getLogger(__name__)

SNOMED = "http://snomed.info/sct"
CARE_TEAM_ROLE_SYSTEM = vigil_system("care-team-role")
PREFERENCES_EXT = vigil_system("notification-preferences")

ChannelKind = Literal["sms", "email"]

# Role name → codings that mean it ((None, code) matches the code in any system). SNOMED CT
# occupations: 224535009 Registered nurse, 106292003 Professional nurse, 309343006 Physician,
# 158965000 Medical practitioner.
DEFAULT_ROLE_CODES: dict[str, frozenset[tuple[str | None, str]]] = {
    "nurse": frozenset({(SNOMED, "224535009"), (SNOMED, "106292003"), (None, "nurse")}),
    "physician": frozenset({(SNOMED, "309343006"), (SNOMED, "158965000"), (None, "physician")}),
    "on-call": frozenset({(CARE_TEAM_ROLE_SYSTEM, "on-call"), (None, "on-call")}),
    "care-manager": frozenset({(CARE_TEAM_ROLE_SYSTEM, "care-manager"), (None, "care-manager")}),
}


@dataclass(frozen=True)
class Contact:
    channel: ChannelKind
    address: str  # E.164 for sms, an email address for email
    rank: int | None = None
    use: str | None = None


@dataclass(frozen=True)
class Recipient:
    ref: str  # "Patient/<id>" or "Practitioner/<id>"
    kind: Literal["patient", "staff"]
    contacts: tuple[Contact, ...]  # most preferred first
    locale: str
    time_zone: str  # IANA
    quiet_hours: QuietHours | None
    role: str | None = None

    def contacts_for(self, channels: Iterable[str] | None = None) -> list[Contact]:
        """Contacts in preference order, limited to the given channel kinds (e.g. a chain level's)."""
        if channels is None:
            return list(self.contacts)
        allowed = list(channels)
        return [c for c in self.contacts if c.channel in allowed]

    def __repr__(self) -> str:  # no addresses in reprs: they end up in logs and tracebacks
        return (f"Recipient(ref={self.ref!r}, kind={self.kind!r}, channels={[c.channel for c in self.contacts]}, "
                f"locale={self.locale!r}, time_zone={self.time_zone!r})")


@dataclass(frozen=True)
class PreferenceDefaults:
    """Program/Vigil settings used where a resource says nothing."""

    locale: str = "en"
    time_zone: str = "UTC"
    quiet_hours: QuietHours | None = DEFAULT_QUIET_HOURS
    channel_order: tuple[str, ...] = ("sms", "email")
    default_region: str = "US"  # for national phone numbers (NANP only; see normalize_e164)
    role_codes: Mapping[str, frozenset[tuple[str | None, str]]] = field(default_factory=lambda: DEFAULT_ROLE_CODES)

    def __post_init__(self) -> None:
        zone(self.time_zone)


def send_at(recipient: Recipient, *, category: str, urgent: bool, now: datetime) -> datetime:
    """When a message may go out. Staff messages and replies to the recipient's own text (consent)
    go now; urgent patient alerts go now; reminders and other patient messages wait for the end
    of quiet hours."""
    if recipient.kind == "staff" or category == "consent" or (urgent and category == "alert"):
        return now
    return next_allowed_send(now, recipient.time_zone, recipient.quiet_hours)


# -- patients --------------------------------------------------------------------------------

def _extension(resource: Mapping[str, Any], url: str) -> Mapping[str, Any] | None:
    return next((e for e in resource.get("extension", []) or [] if e.get("url") == url), None)


def _sub(ext: Mapping[str, Any] | None, url: str) -> Any:
    if not ext:
        return None
    for e in ext.get("extension", []) or []:
        if e.get("url") == url:
            for key, value in e.items():
                if key.startswith("value"):
                    return value
    return None


def _active(period: Mapping[str, Any] | None, now: datetime | None) -> bool:
    if not period or now is None:
        return True
    try:
        if period.get("start") and parse_instant(_as_instant(period["start"])) > now:
            return False
        if period.get("end") and parse_instant(_as_instant(period["end"])) <= now:
            return False
    except ValueError:
        return True  # an unreadable period does not hide a contact
    return True


def _as_instant(text: str) -> str:
    return text if "T" in text else f"{text}T00:00:00Z"


def _contacts(telecoms: Iterable[Mapping[str, Any]], order: Sequence[str], *, now: datetime | None,
              default_region: str, explicit_order: bool) -> tuple[Contact, ...]:
    found: list[tuple[tuple[int, int, int, int], Contact]] = []
    seen: set[tuple[str, str]] = set()
    for index, t in enumerate(telecoms):
        system, value, use = t.get("system"), t.get("value"), t.get("use")
        if not value or use == "old" or not _active(t.get("period"), now):
            continue
        if system == "email":
            channel: ChannelKind = "email"
            address = value.strip()
            # sms first, then a mobile phone; a phone without a use last; home/work lines are not texted.
            strength = 0
        elif system in ("sms", "phone"):
            if system == "phone" and use not in (None, "mobile"):
                continue
            try:
                address = normalize_e164(value, default_region=default_region)
            except InvalidPhoneNumber:
                log.warning("a telecom entry (#%d) is not a usable phone number; skipped", index)
                continue
            channel = "sms"
            strength = 0 if system == "sms" else 1 if use == "mobile" else 2
        else:
            continue
        if (channel, address.lower()) in seen:
            continue
        seen.add((channel, address.lower()))
        rank = t.get("rank")
        channel_pos = order.index(channel) if channel in order else len(order)
        rank_key = rank if isinstance(rank, int) else 10**6
        key = (channel_pos, rank_key, strength, index) if explicit_order else (rank_key, channel_pos, strength, index)
        found.append((key, Contact(channel, address, rank if isinstance(rank, int) else None, use)))
    return tuple(c for _, c in sorted(found, key=lambda kc: kc[0]) if c.channel in order)


def _language(communications: Iterable[Any]) -> str | None:
    """Preferred language code: the entry marked preferred, else the first with a code."""
    entries = list(communications or [])
    entries.sort(key=lambda c: 0 if isinstance(c, dict) and c.get("preferred") else 1)
    for entry in entries:
        concept = entry.get("language") if isinstance(entry, dict) and "language" in entry else entry
        for coding in (concept or {}).get("coding", []) or []:
            if coding.get("code"):
                return str(coding["code"])
    return None


def _time_zone(resource: Mapping[str, Any], default: str, what: str) -> str:
    return patient_time_zone_name(resource, default)


def patient_recipient(patient: Mapping[str, Any], defaults: PreferenceDefaults | None = None, *,
                      now: datetime | None = None) -> Recipient:
    """The patient as a message recipient (contacts may be empty: nothing to send to)."""
    defaults = defaults or PreferenceDefaults()
    ref = f"Patient/{patient.get('id')}"
    prefs = _extension(patient, PREFERENCES_EXT)
    order_text = _sub(prefs, "channel-order")
    order = tuple(p.strip() for p in order_text.split(",") if p.strip()) if order_text else defaults.channel_order
    unknown = [c for c in order if c not in ("sms", "email")]
    if unknown:
        raise PreferenceError(f"{ref}: channel-order names unknown channel(s) {', '.join(unknown)} (use sms, email)")
    quiet_text = _sub(prefs, "quiet-hours")
    quiet = QuietHours.parse(quiet_text) if quiet_text is not None else defaults.quiet_hours
    locale = _sub(prefs, "locale") or _language(patient.get("communication", [])) or defaults.locale
    return Recipient(
        ref=ref,
        kind="patient",
        contacts=_contacts(patient.get("telecom", []) or [], order, now=now, default_region=defaults.default_region,
                           explicit_order=bool(order_text)),
        locale=str(locale),
        time_zone=_time_zone(patient, defaults.time_zone, ref),
        quiet_hours=quiet,
    )


# -- staff -----------------------------------------------------------------------------------

def _matches_role(concepts: Iterable[Mapping[str, Any]], codes: frozenset[tuple[str | None, str]], role: str) -> bool:
    for concept in concepts or []:
        if (concept.get("text") or "").strip().lower() == role:
            return True
        for coding in concept.get("coding", []) or []:
            code = coding.get("code")
            if (coding.get("system"), code) in codes or (None, code) in codes:
                return True
    return False


def _read(store: FhirStore, reference: str) -> dict[str, Any] | None:
    kind, _, rid = reference.partition("/")
    if not kind or not rid:
        return None
    try:
        return store.read(kind, rid)
    except (ResourceNotFound, ResourceGone):
        return None


def _staff_member(store: FhirStore, member_ref: str, role: str, defaults: PreferenceDefaults,
                  now: datetime | None) -> Recipient | None:
    resource = _read(store, member_ref)
    if resource is None:
        return None
    telecoms: list[Mapping[str, Any]] = []
    practitioner: dict[str, Any] | None = None
    ref = member_ref
    if resource["resourceType"] == "PractitionerRole":
        if resource.get("active") is False or not _active(resource.get("period"), now):
            return None
        telecoms.extend(resource.get("telecom", []) or [])  # the role's (work) contacts first
        practitioner_ref = (resource.get("practitioner") or {}).get("reference")
        if practitioner_ref:
            practitioner = _read(store, practitioner_ref)
            ref = practitioner_ref
    elif resource["resourceType"] == "Practitioner":
        practitioner = resource
    else:
        return None
    if practitioner is not None:
        if practitioner.get("active") is False:
            return None
        telecoms.extend(practitioner.get("telecom", []) or [])
    base = practitioner or resource
    return Recipient(
        ref=ref,
        kind="staff",
        contacts=_contacts(telecoms, defaults.channel_order, now=now, default_region=defaults.default_region,
                           explicit_order=False),
        locale=_language(base.get("communication", []) or []) or defaults.locale,
        time_zone=_time_zone(base, defaults.time_zone, ref),
        quiet_hours=None,  # escalations to staff never wait
        role=role,
    )


def staff_recipients(store: FhirStore, patient_ref: str, roles: Sequence[str], *, now: datetime | None = None,
                     defaults: PreferenceDefaults | None = None, roster_fallback: bool = True) -> list[Recipient]:
    """Staff holding any of `roles` on the patient's active care teams, in the order of `roles`
    (each person once). A role nobody on the care team holds is looked up among active
    PractitionerRoles when `roster_fallback` is on."""
    defaults = defaults or PreferenceDefaults()
    teams = store.search("CareTeam", {"patient": patient_ref, "status": "active"}).resources
    out: list[Recipient] = []
    seen: set[str] = set()
    for role in roles:
        codes = defaults.role_codes.get(role)
        if codes is None:
            raise PreferenceError(f"unknown care-team role {role!r} (known: {', '.join(sorted(defaults.role_codes))})")
        found_for_role = False
        for team in teams:
            for participant in team.get("participant", []) or []:
                member = (participant.get("member") or {}).get("reference")
                if not member or not _active(participant.get("period"), now):
                    continue
                if not _matches_role(participant.get("role", []) or [], codes, role):
                    continue
                recipient = _staff_member(store, member, role, defaults, now)
                if recipient is None:
                    continue
                found_for_role = True
                if recipient.ref not in seen:
                    seen.add(recipient.ref)
                    out.append(recipient)
        if not found_for_role and roster_fallback:
            for recipient in _roster(store, role, codes, defaults, now):
                if recipient.ref not in seen:
                    seen.add(recipient.ref)
                    out.append(recipient)
    return out


def _roster(store: FhirStore, role: str, codes: frozenset[tuple[str | None, str]], defaults: PreferenceDefaults,
            now: datetime | None) -> list[Recipient]:
    tokens = sorted({f"{system}|{code}" if system else code for system, code in codes})
    try:
        roles = store.search("PractitionerRole", {"role": ",".join(tokens), "active": "true"}).resources
    except InvalidSearch:
        return []
    out = []
    for pr in roles:
        recipient = _staff_member(store, f"PractitionerRole/{pr['id']}", role, defaults, now)
        if recipient is not None:
            out.append(recipient)
    return out
