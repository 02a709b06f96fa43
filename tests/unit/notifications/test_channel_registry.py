"""A new provider is one module and one registry line: a Twilio-style SMS provider registered here
sends through the whole guarded pipeline (consent, E.164, the send ledger, redaction), beside the
configured SMS channel, with real SQLite files for the store, the consent records and the ledger."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from fhirstore.sqlite import SqliteFhirStore
from notifications.channels import ChannelConfigError, build_channels
from notifications.channels.base import Idempotency, OutgoingMessage, ProviderResult
from notifications.channels.config import BuildContext, ProviderSpec, require
from notifications.channels.ledger import SqliteSendLedger
from notifications.channels.registry import PROVIDERS
from notifications.consent import SmsConsentRegistry
from notifications.dispatch import MessageRequest, deliver

# -- the provider module: what a Twilio or web-push adapter would hold -------------------------

class FakeTwilioProvider:
    """Calls "the provider" (records the call) and maps its answer; no policy of its own."""

    idempotency: Idempotency = "none"  # like Twilio's Messages API: no idempotency key

    def __init__(self, account: str, sender: str) -> None:
        self.account, self.sender = account, sender
        self.calls: list[OutgoingMessage] = []
        self.answers: list[ProviderResult] = []

    def send(self, message: OutgoingMessage) -> ProviderResult:
        self.calls.append(message)
        if self.answers:
            return self.answers.pop(0)
        return ProviderResult("accepted", provider_id=f"SM{len(self.calls):04d}")


def _build(name: str, entry: Mapping[str, Any], context: BuildContext) -> FakeTwilioProvider:
    return FakeTwilioProvider(str(require(name, entry, "account")), str(require(name, entry, "from")))


SPEC = ProviderSpec(kinds=("sms",), fields=frozenset({"account", "from"}), build=_build)


# -- the registry line, and the pipeline around it ---------------------------------------------

@pytest.fixture(autouse=True)
def _registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PROVIDERS, "fake_twilio", SPEC)


@pytest.fixture
def store(tmp_path: Path, clock):
    s = SqliteFhirStore(tmp_path / "fhir.db", clock=clock)
    yield s
    s.close()


@pytest.fixture
def ledger(tmp_path: Path):
    led = SqliteSendLedger(tmp_path / "sends.db")
    yield led
    led.close()


def channels_for(config: dict[str, Any], store, ledger, clock, tmp_path: Path):
    return build_channels(config, ledger=ledger, opt_outs=SmsConsentRegistry(store, clock), clock=clock,
                          base_dir=tmp_path)


TWILIO = {"type": "fake_twilio", "account": "AC0001", "from": "+18005550100"}


def test_the_only_sms_provider_carries_kind_sms_and_sends_once(store, ledger, clock, tmp_path) -> None:
    channels = channels_for({"twilio": TWILIO}, store, ledger, clock, tmp_path)
    twilio = channels["twilio"].provider
    assert channels["sms"] is channels["twilio"]  # a contact's "sms" reaches it by kind
    request = MessageRequest(key="alert-9|patient", channel="sms", to="(555) 555-0123", body="Please call us.",
                             category="alert")
    outcome = deliver(store, channels, request, clock)
    assert (outcome.status, outcome.provider_id) == ("sent", "SM0001")
    assert [m.to for m in twilio.calls] == ["+15555550123"]  # normalized by the pipeline, not the adapter
    # Redelivered: the Communication is completed, and even a direct resend is stopped by the ledger.
    assert deliver(store, channels, request, clock).status == "already-sent"
    again = channels["twilio"].send(OutgoingMessage(request.message_id, "sms", "+15555550123", "Please call us."))
    assert (again.status, again.provider_id) == ("duplicate", "SM0001")
    assert len(twilio.calls) == 1
    assert ledger.lookup(f"twilio:{request.message_id}").state == "sent"


def test_an_opted_out_number_is_refused_before_the_provider_is_called(store, ledger, clock, tmp_path) -> None:
    channels = channels_for({"twilio": TWILIO}, store, ledger, clock, tmp_path)
    SmsConsentRegistry(store, clock).opt_out("+15555550124", keyword="STOP")
    outcome = deliver(store, channels, MessageRequest(key="reminder-1|patient", channel="sms", to="+1 555 555 0124",
                                                      body="Time for your reading.", category="reminder"), clock)
    assert outcome.status == "failed"
    comm = store.read("Communication", outcome.communication_id)
    assert comm["statusReason"]["coding"][0]["code"] == "opted-out"
    assert channels["twilio"].provider.calls == []
    # The STOP confirmation itself is the one text an opted-out number still gets.
    confirm = channels["twilio"].send(OutgoingMessage("stop-reply", "sms", "+15555550124", "You will get no more "
                                                      "texts.", category="consent"))
    assert confirm.status == "sent"


def test_a_providers_error_is_kept_scrubbed_and_releases_the_claim(store, ledger, clock, tmp_path) -> None:
    channels = channels_for({"twilio": TWILIO}, store, ledger, clock, tmp_path)
    twilio = channels["twilio"].provider
    twilio.answers.append(ProviderResult("refused", reason="Twilio refused the recipient (HTTP 400)",
                                         code="rejected", detail="The 'To' number +1 (555) 555-0125 is not valid"))
    request = MessageRequest(key="alert-10|patient", channel="sms", to="+15555550125", body="Please call us.")
    outcome = deliver(store, channels, request, clock)
    reason = store.read("Communication", outcome.communication_id)["statusReason"]["text"]
    assert reason == "Twilio refused the recipient (HTTP 400): The 'To' number <number> is not valid"
    assert ledger.lookup(f"twilio:{request.message_id}") is None  # certainly not sent: may be sent later


def test_an_in_doubt_send_is_never_repeated(store, ledger, clock, tmp_path) -> None:
    channels = channels_for({"twilio": TWILIO}, store, ledger, clock, tmp_path)
    twilio = channels["twilio"].provider
    twilio.answers.append(ProviderResult("in-doubt", reason="no response after sending"))
    message = OutgoingMessage("doubt-1", "sms", "+15555550126", "Please call us.")
    first = channels["twilio"].send(message)
    assert (first.status, first.code) == ("permanent", "in-doubt")
    assert channels["twilio"].send(message).code == "in-doubt" and len(twilio.calls) == 1


def test_two_sms_providers_coexist_by_name(store, ledger, clock, tmp_path) -> None:
    channels = channels_for({"sms": {"type": "outbox", "directory": "outbox"}, "twilio": TWILIO}, store, ledger,
                            clock, tmp_path)
    assert (channels["sms"].kind, channels["twilio"].kind) == ("sms", "sms")
    by_kind = deliver(store, channels, MessageRequest(key="k-1", channel="sms", to="+15555550127", body="a"), clock)
    by_name = deliver(store, channels, MessageRequest(key="k-2", channel="twilio", to="+15555550127", body="b"),
                      clock)
    assert by_kind.status == by_name.status == "sent"
    assert [m["body"] for m in channels["sms"].provider.messages()] == ["a"]
    assert [m.body for m in channels["twilio"].provider.calls] == ["b"]


@pytest.mark.parametrize("entry,message", [
    ({**TWILIO, "kind": "email"}, "'kind' must be one of sms for a fake_twilio channel"),
    ({"type": "fake_twilio", "from": "+18005550100"}, "'account' is required"),
    ({**TWILIO, "region": "US"}, "unknown setting(s) region"),
])
def test_a_registered_providers_settings_are_checked(entry, message, store, ledger, clock, tmp_path) -> None:
    with pytest.raises(ChannelConfigError) as err:
        channels_for({"twilio": entry}, store, ledger, clock, tmp_path)
    assert "channel 'twilio'" in str(err.value) and message in str(err.value)


def test_a_provider_without_idempotency_needs_a_ledger(tmp_path) -> None:
    with pytest.raises(ChannelConfigError, match="send ledger"):
        build_channels({"twilio": TWILIO})
