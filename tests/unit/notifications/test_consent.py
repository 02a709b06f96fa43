"""Inbound SMS keywords, the durable opt-out record, E.164 numbers."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from fhir.resources.R4B.consent import Consent

from fhirstore.sqlite import SqliteFhirStore
from notifications.consent import (
    InvalidPhoneNumber,
    SmsConsentRegistry,
    classify,
    consent_id,
    handle_inbound_sms,
    normalize_e164,
)

PHONE = "+15555550123"


@pytest.fixture
def registry(tmp_path: Path, clock):
    store = SqliteFhirStore(tmp_path / "fhir.db", clock=clock)
    yield SmsConsentRegistry(store, clock)
    store.close()


@pytest.mark.parametrize("text", ["STOP", "stop", " Stop. ", "STOPALL", "unsubscribe", "Cancel", "END", "quit",
                                  "Revoke", "OPT OUT", "opt-out", "optout", "Stop texting me", "STOP!!", "Alto",
                                  "baja"])
def test_opt_out_words(text) -> None:
    assert classify(text).kind == "opt-out"


@pytest.mark.parametrize("text", ["START", "unstop", "Yes", "yes."])
def test_opt_in_words(text) -> None:
    assert classify(text).kind == "opt-in"


@pytest.mark.parametrize("text", ["HELP", "info", "Help?", "help me please", "AYÚDA"])
def test_help_words(text) -> None:
    assert classify(text).kind == "help"


@pytest.mark.parametrize("text", ["I will stop by tomorrow", "yes please call me", "thanks", "", None,
                                  "Started my meds", "endless"])
def test_ordinary_text_is_no_keyword(text) -> None:
    assert classify(text) is None


@pytest.mark.parametrize(("text", "argument"), [
    ("ack 4821", "4821"), ("ACK k7mx3q", "K7MX3Q"), ("Ack K7MX3Q thanks", "K7MX3Q"),
    ("ACK K7M X3Q", "K7MX3Q"), ("ack k7m-x3q", "K7M-X3Q"), ("ACK", None),
])
def test_ack_with_code(text, argument) -> None:
    kw = classify(text)
    assert (kw.kind, kw.argument) == ("ack", argument)


@pytest.mark.parametrize("raw,e164", [
    ("+1 (555) 555-0123", PHONE), ("555.555.0123", PHONE), ("15555550123", PHONE), ("tel:+1-555-555-0123", PHONE),
    ("0034 612 345 678", "+34612345678"), ("+44 20 7946 0958", "+442079460958"),
])
def test_normalize_e164(raw, e164) -> None:
    assert normalize_e164(raw) == e164


@pytest.mark.parametrize("raw,why", [
    ("555-0123", "7 digits"), ("+1 555 0123", "11 digits"), ("12-345", "5 digits"),
    ("+0123456789", "cannot start with 0"), ("+1555CALLNOW", "other than digits"), ("", "empty"),
    ("+1234567890123456", "8 to 15"),
])
def test_bad_numbers_are_explained_without_echoing_them(raw, why) -> None:
    with pytest.raises(InvalidPhoneNumber) as err:
        normalize_e164(raw)
    assert why in str(err.value)
    digits = "".join(c for c in raw if c.isdigit())
    assert not digits or digits not in str(err.value)


def test_national_numbers_outside_north_america_need_a_country_code() -> None:
    with pytest.raises(InvalidPhoneNumber, match="no country code"):
        normalize_e164("612345678", default_region="ES")


def test_stop_is_recorded_durably_as_a_valid_consent(registry, clock, tmp_path) -> None:
    outcome = handle_inbound_sms(registry, "(555) 555-0123", "STOP", received_at=clock.now(), patient_ref="Patient/p1")
    assert (outcome.kind, outcome.changed, outcome.reply_template) == ("opt-out", True, "consent_stop")
    assert registry.is_opted_out(PHONE)
    consent = registry.store.read("Consent", consent_id(PHONE))
    Consent.model_validate(consent)
    assert consent["provision"]["type"] == "deny" and consent["patient"] == {"reference": "Patient/p1"}
    assert "5555550123" not in consent["id"]
    # Survives a restart: a new store object on the same file.
    reopened = SqliteFhirStore(tmp_path / "fhir.db", clock=clock)
    assert SmsConsentRegistry(reopened, clock).is_opted_out(PHONE)
    reopened.close()


def test_redelivered_stop_sends_no_second_confirmation(registry, clock) -> None:
    assert handle_inbound_sms(registry, PHONE, "STOP", received_at=clock.now()).reply_template == "consent_stop"
    again = handle_inbound_sms(registry, PHONE, "STOP", received_at=clock.now())
    assert (again.changed, again.reply_template) == (False, None)
    assert handle_inbound_sms(registry, PHONE, "QUIT", received_at=clock.now()).reply_template is None


def test_start_reenables_and_help_is_always_answered(registry, clock) -> None:
    handle_inbound_sms(registry, PHONE, "STOP", received_at=clock.now())
    assert handle_inbound_sms(registry, PHONE, "HELP").reply_template == "consent_help"  # even when opted out
    start = handle_inbound_sms(registry, PHONE, "START", received_at=clock.now() + timedelta(minutes=5))
    assert (start.kind, start.changed, start.reply_template) == ("opt-in", True, "consent_start")
    assert not registry.is_opted_out(PHONE)
    history = registry.store.history("Consent", consent_id(PHONE))
    assert len(history["entry"]) == 2  # both decisions kept as versions


def test_yes_from_a_number_that_never_opted_out_asks_for_no_confirmation(registry, clock) -> None:
    outcome = handle_inbound_sms(registry, PHONE, "YES", received_at=clock.now())
    assert (outcome.kind, outcome.changed, outcome.reply_template) == ("opt-in", False, None)
    assert not registry.is_opted_out(PHONE)


def test_out_of_order_keywords_keep_the_latest_decision(registry, clock) -> None:
    stop_at, start_at = clock.now(), clock.now() + timedelta(minutes=1)
    handle_inbound_sms(registry, PHONE, "START", received_at=start_at)  # processed first
    late_stop = handle_inbound_sms(registry, PHONE, "STOP", received_at=stop_at)
    assert late_stop.changed is False and not registry.is_opted_out(PHONE)
    handle_inbound_sms(registry, PHONE, "STOP", received_at=start_at + timedelta(minutes=1))
    handle_inbound_sms(registry, PHONE, "START", received_at=stop_at)  # an old START re-delivered
    assert registry.is_opted_out(PHONE)


def test_unknown_number_is_not_opted_out(registry) -> None:
    assert registry.status("+15555550999") == "unknown" and not registry.is_opted_out("+15555550999")
