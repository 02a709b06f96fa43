"""SMS consent: inbound keywords (STOP / START / HELP), the durable opt-out record, E.164 numbers.

Keyword sets: the FCC 24-18 per-se revocation words
and the CTIA STOP/HELP practice. An opt-out is written *before* anything else happens (§6.2:
"writes the opt-out before any further send") and every SMS send checks it
(`notifications.channels.acs_sms`).

The record is a FHIR `Consent` per phone number with a deterministic id (see
docs/decisions-notifications.md for why): one read answers "may we text this number?", the store
keeps every change as a version (an audit trail), and the same record serves the embedded store
and a FHIR server shared by many Functions instances.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from common.clock import Clock, iso, parse_instant
from common.codes import LOINC, vigil_system
from fhirstore.errors import InvalidSearch, ResourceGone, ResourceNotFound
from fhirstore.port import FhirStore

log = logging.getLogger(__name__)

# FCC 24-18 per-se revocations + CTIA STOP set + the ones the brief names.
OPT_OUT_KEYWORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPT OUT", "OPTOUT", "OPT-OUT"}
)
# Spanish revocations. "Any reasonable means" revokes consent (FCC 24-18), and Vigil ships Spanish
# messages, so a Spanish "stop" is honoured too.
OPT_OUT_KEYWORDS_ES = frozenset({"ALTO", "PARAR", "PARE", "CANCELAR", "BAJA"})
OPT_IN_KEYWORDS = frozenset({"START", "UNSTOP", "YES"})
HELP_KEYWORDS = frozenset({"HELP", "INFO", "AYUDA"})
ACK_KEYWORDS = frozenset({"ACK", "ACKNOWLEDGE", "ACKNOWLEDGED"})

KeywordKind = Literal["opt-out", "opt-in", "help", "ack"]

CONSENT_SYSTEM = vigil_system("sms-consent")
CONSENT_KEYWORD_EXT = vigil_system("consent-keyword")
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"


class InvalidPhoneNumber(ValueError):
    """A number Vigil cannot turn into E.164. The message never contains the number itself."""


@dataclass(frozen=True)
class Keyword:
    kind: KeywordKind
    word: str  # the keyword as matched, upper case
    argument: str | None = None  # e.g. the code after "ACK"


def _normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))  # "AYÚDA" -> "AYUDA"
    text = re.sub(r"\s+", " ", text).strip().upper()
    return text.strip(" .!?¡¿,;:'\"()[]")


def classify(text: str | None) -> Keyword | None:
    """The keyword an inbound SMS carries, or None for ordinary text.

    A whole-message keyword always counts. A message that *starts* with an opt-out or help word
    ("Stop texting me", "help please") counts too: FCC 24-18 judges revocations on the totality of
    the message, and erring towards opting out is the safe side. Opt-in words count only as the
    whole message, because "yes" is a common answer to other questions.
    """
    if not text:
        return None
    norm = _normalize_text(text)
    if not norm:
        return None
    if norm in OPT_OUT_KEYWORDS or norm in OPT_OUT_KEYWORDS_ES:
        return Keyword("opt-out", norm)
    if norm in OPT_IN_KEYWORDS:
        return Keyword("opt-in", norm)
    if norm in HELP_KEYWORDS:
        return Keyword("help", norm)
    words = norm.split(" ")
    first = words[0].strip(".!?,;:")
    first_two = " ".join(words[:2])
    if first_two in OPT_OUT_KEYWORDS:
        return Keyword("opt-out", first_two)
    if first in OPT_OUT_KEYWORDS or first in OPT_OUT_KEYWORDS_ES:
        return Keyword("opt-out", first)
    if first in ACK_KEYWORDS:
        rest = words[1:]
        argument = rest[0] if rest else None
        if len(rest) > 1 and len(rest[0].replace("-", "")) < ACK_CODE_MIN:
            argument = rest[0] + rest[1]  # a code typed in two halves: "ACK K7M X3Q"
        return Keyword("ack", first, argument)
    if first in HELP_KEYWORDS:
        return Keyword("help", first)
    return None


_SEPARATORS = re.compile(r"[\s\-.()/]")
ACK_CODE_MIN = 6  # shorter first word after ACK: the code was split in two


def normalize_e164(number: str, *, default_region: str = "US") -> str:
    """`+<country code><subscriber number>`, digits only, at most 15 digits (ITU-T E.164).

    A national number is accepted only for the North American Numbering Plan regions (10 digits,
    or 11 starting with 1) — elsewhere the country code cannot be guessed safely, and a wrong
    guess would text a stranger.
    """
    if not isinstance(number, str) or not number.strip():
        raise InvalidPhoneNumber("the phone number is empty")
    text = number.strip()
    if text.lower().startswith("tel:"):
        text = text[4:]
    text = _SEPARATORS.sub("", text)
    if text.startswith("00"):
        text = "+" + text[2:]
    if text.startswith("+"):
        digits = text[1:]
        if not digits.isdigit():
            raise InvalidPhoneNumber("the phone number has characters other than digits after '+'")
    else:
        if not text.isdigit():
            raise InvalidPhoneNumber("the phone number has characters other than digits")
        if default_region.upper() not in ("US", "CA", "NANP"):
            raise InvalidPhoneNumber(
                "the phone number has no country code; store numbers in E.164 form (+<country code><number>)"
            )
        if len(text) == 10:
            digits = "1" + text
        elif len(text) == 11 and text.startswith("1"):
            digits = text
        else:
            raise InvalidPhoneNumber(
                f"the phone number has {len(text)} digits and no country code; a North American "
                "number has 10 (or 11 starting with 1)"
            )
    if digits.startswith("0"):
        raise InvalidPhoneNumber("an E.164 country code cannot start with 0")
    if not 8 <= len(digits) <= 15:
        raise InvalidPhoneNumber(f"the phone number has {len(digits)} digits; E.164 allows 8 to 15")
    if digits.startswith("1") and len(digits) != 11:
        raise InvalidPhoneNumber(f"a +1 (North American) number has 11 digits, this one has {len(digits)}")
    return "+" + digits


def consent_id(phone_e164: str) -> str:
    """The Consent id for a number: a hash, so the number never appears in a URL, id or log line."""
    return "sms-" + hashlib.sha256(phone_e164.encode()).hexdigest()[:40]


@dataclass(frozen=True)
class ConsentChange:
    changed: bool  # False: the number was already in that state, or a newer keyword is on record
    status: Literal["opted-out", "opted-in"]


class SmsConsentRegistry:
    """The durable SMS opt-out record (FHIR `Consent`, one per number).

    `is_opted_out` is what the SMS channel asks before every send. No cache: an opt-out must hold
    from the very next message (FCC 24-18: honor opt-outs immediately).
    """

    def __init__(self, store: FhirStore, clock: Clock, *, default_region: str = "US") -> None:
        self.store = store
        self.clock = clock
        self.default_region = default_region

    def _read(self, phone: str) -> dict[str, Any] | None:
        try:
            return self.store.read("Consent", consent_id(phone))
        except (ResourceNotFound, ResourceGone):
            return None

    def status(self, phone: str) -> Literal["opted-out", "opted-in", "unknown"]:
        e164 = normalize_e164(phone, default_region=self.default_region)
        consent = self._read(e164)
        if consent is None:
            return "unknown"
        return "opted-out" if _denies(consent) else "opted-in"

    def is_opted_out(self, phone_e164: str) -> bool:
        return self.status(phone_e164) == "opted-out"

    def opt_out(self, phone: str, *, keyword: str = "STOP", received_at: datetime | None = None,
                patient_ref: str | None = None) -> ConsentChange:
        return self._record(phone, "deny", keyword, received_at, patient_ref)

    def opt_in(self, phone: str, *, keyword: str = "START", received_at: datetime | None = None,
               patient_ref: str | None = None) -> ConsentChange:
        return self._record(phone, "permit", keyword, received_at, patient_ref)

    def _record(self, phone: str, provision: str, keyword: str, received_at: datetime | None,
                patient_ref: str | None) -> ConsentChange:
        e164 = normalize_e164(phone, default_region=self.default_region)
        when = received_at or self.clock.now()
        wanted: Literal["opted-out", "opted-in"] = "opted-out" if provision == "deny" else "opted-in"
        existing = self._read(e164)
        if existing is not None:
            recorded_at = existing.get("dateTime")
            # Inbound events arrive at least once and out of order: a STOP sent after a START
            # must win even if its event is processed first.
            if recorded_at and parse_instant(recorded_at) > when:
                log.info("consent %s: older %s keyword ignored", consent_id(e164), provision)
                return ConsentChange(False, "opted-out" if _denies(existing) else "opted-in")
            if (_denies(existing)) == (provision == "deny"):
                return ConsentChange(False, wanted)
        patient = patient_ref or ((existing or {}).get("patient") or {}).get("reference")
        self.store.update(_consent_resource(e164, provision, keyword, when, patient))
        log.info("consent %s recorded: %s", consent_id(e164), wanted)
        # Opting in a number that never opted out changes nothing for sending (the number is
        # texted on the consent given with it, the TCPA healthcare-message exemption, FCC 15-72), so it asks for no
        # confirmation; it is still recorded, so an older STOP processed later cannot win.
        return ConsentChange(existing is not None or provision == "deny", wanted)


def _denies(consent: dict[str, Any]) -> bool:
    return consent.get("status") == "active" and (consent.get("provision") or {}).get("type") == "deny"


def _consent_resource(e164: str, provision: str, keyword: str, when: datetime,
                      patient_ref: str | None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "id": consent_id(e164),
        "identifier": [{"system": CONSENT_SYSTEM, "value": e164}],
        "status": "active",
        "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
        "category": [
            {"coding": [{"system": LOINC, "code": "59284-0", "display": "Patient Consent"}]},
            {"coding": [{"system": vigil_system("consent-category"), "code": "sms"}]},
        ],
        "dateTime": iso(when),
        "policyRule": {"coding": [{"system": V3_ACT_CODE, "code": "OPTOUT" if provision == "deny" else "OPTIN"}]},
        "provision": {
            "type": provision,
            "period": {"start": iso(when)},
            "action": [{"coding": [{"system": vigil_system("consent-action"), "code": "sms"}]}],
        },
        "extension": [{"url": CONSENT_KEYWORD_EXT, "valueString": keyword[:40]}],
    }
    if patient_ref:
        resource["patient"] = {"reference": patient_ref}
    return resource


ReplyTemplate = Literal["consent_stop", "consent_start", "consent_help"]


@dataclass(frozen=True)
class InboundOutcome:
    """What an inbound SMS meant and what, if anything, to answer.

    reply_template is the template to send back to the sender with category "consent" (or None).
    For "ack" the caller resolves the acknowledgement; `argument` is the code after ACK, if any.
    """

    kind: KeywordKind | None
    changed: bool = False
    reply_template: ReplyTemplate | None = None
    argument: str | None = None


def handle_inbound_sms(
    registry: SmsConsentRegistry,
    sender: str,
    text: str | None,
    *,
    received_at: datetime | None = None,
    patient_ref: str | None = None,
) -> InboundOutcome:
    """Apply an inbound SMS (`Microsoft.Communication.SMSReceived`: data.from, data.message,
    data.receivedTimestamp). Writes the opt-out/opt-in before returning; safe to re-run for a
    re-delivered event (the second run changes nothing and asks for no second reply)."""
    keyword = classify(text)
    if keyword is None:
        return InboundOutcome(None)
    if keyword.kind == "opt-out":
        change = registry.opt_out(sender, keyword=keyword.word, received_at=received_at, patient_ref=patient_ref)
        # One confirmation only (FCC 24-18), and only when this message changed the state.
        return InboundOutcome("opt-out", change.changed, "consent_stop" if change.changed else None)
    if keyword.kind == "opt-in":
        change = registry.opt_in(sender, keyword=keyword.word, received_at=received_at, patient_ref=patient_ref)
        return InboundOutcome("opt-in", change.changed, "consent_start" if change.changed else None)
    if keyword.kind == "help":
        return InboundOutcome("help", False, "consent_help")
    return InboundOutcome("ack", False, None, keyword.argument)


def find_patient_by_phone(store: FhirStore, phone_e164: str) -> str | None:
    """`Patient/<id>` whose telecom holds this number, when exactly one does (else None)."""
    try:
        found = store.search("Patient", {"telecom": phone_e164}).resources
    except InvalidSearch:
        return None
    return f"Patient/{found[0]['id']}" if len(found) == 1 else None
