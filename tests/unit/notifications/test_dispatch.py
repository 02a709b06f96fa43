"""deliver(): fallback to the next channel, retry bookkeeping on the Communication, replay safety."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from fhir.resources.R4B.communication import Communication

from fhirstore.sqlite import SqliteFhirStore
from notifications.channels.base import OutgoingMessage, SendResult
from notifications.channels.outbox import OutboxProvider
from notifications.channels.pipeline import GuardedChannel
from notifications.dispatch import (
    Fallback,
    MessageRequest,
    TransientDeliveryError,
    attempts_of,
    backoff,
    deliver,
    next_attempt_at,
)


class Scripted:
    """A channel that answers from a script (a stand-in provider), recording what it was asked."""

    def __init__(self, name: str, *results: SendResult) -> None:
        self.name, self.results, self.sent = name, list(results), []

    def send(self, message: OutgoingMessage) -> SendResult:
        self.sent.append(message)
        return self.results.pop(0) if len(self.results) > 1 else self.results[0]


def outbox_channel(directory: Path) -> GuardedChannel:
    return GuardedChannel("email", "email", OutboxProvider(directory))


@pytest.fixture
def store(tmp_path: Path, clock):
    s = SqliteFhirStore(tmp_path / "fhir.db", clock=clock)
    yield s
    s.close()


def request(**kw) -> MessageRequest:
    base = dict(key="alert-1|patient", channel="sms", to="+15555550123", body="Please call us.", category="reminder",
                patient_ref="Patient/p1",
                fallbacks=(Fallback("email", "p@example.org", "Please call us (email).", subject="Acme"),))
    base.update(kw)
    return MessageRequest(**base)


def test_permanent_failure_falls_back_and_a_replay_sends_nothing(store, clock, tmp_path) -> None:
    sms = Scripted("sms", SendResult("permanent", reason="the recipient has opted out of SMS (STOP)", code="opted-out"))
    outbox = outbox_channel(tmp_path / "outbox")
    channels = {"sms": sms, "email": outbox}
    outcome = deliver(store, channels, request(), clock)
    assert (outcome.status, outcome.channel, len(outcome.failed_before)) == ("sent", "email", 1)
    failed = store.read("Communication", outcome.failed_before[0])
    assert failed["status"] == "not-done" and failed["statusReason"] == {
        "text": "the recipient has opted out of SMS (STOP)",
        "coding": [{"system": "urn:vigil:send-failure", "code": "opted-out"}]}
    sent = store.read("Communication", outcome.communication_id)
    for c in (failed, sent):
        Communication.model_validate(c)
    assert sent["status"] == "completed" and sent["medium"][0]["coding"][0]["code"] == "email"
    assert [m["subject"] for m in outbox.provider.messages()] == ["Acme"]

    again = deliver(store, channels, request(), clock)
    assert (again.status, again.communication_id) == ("already-sent", outcome.communication_id)
    assert len(sms.sent) == 1 and len(outbox.provider.messages()) == 1


def test_no_fallback_left_means_failed(store, clock) -> None:
    sms = Scripted("sms", SendResult("permanent", reason="refused", code="rejected"))
    outcome = deliver(store, {"sms": sms}, request(fallbacks=()), clock)
    assert (outcome.status, outcome.reason) == ("failed", "refused")
    assert deliver(store, {"sms": sms}, request(fallbacks=()), clock).status == "failed"
    assert len(sms.sent) == 1


def test_unconfigured_channel_falls_back(store, clock, tmp_path) -> None:
    outcome = deliver(store, {"email": outbox_channel(tmp_path / "o")}, request(), clock)
    assert outcome.status == "sent" and outcome.channel == "email"
    assert "no channel named 'sms'" in store.read("Communication", outcome.failed_before[0])["statusReason"]["text"]


def test_transient_failures_are_counted_then_given_up_on(store, clock, tmp_path) -> None:
    sms = Scripted("sms", SendResult("transient", reason="ACS is unavailable (HTTP 503)", code="provider-error"))
    channels = {"sms": sms, "email": outbox_channel(tmp_path / "o")}
    req = request(max_attempts=3)
    for attempt in (1, 2):
        with pytest.raises(TransientDeliveryError) as err:
            deliver(store, channels, req, clock)
        assert err.value.attempt == attempt and err.value.retry_at == clock.now() + backoff(attempt)
        comm = store.read("Communication", err.value.communication_id)
        assert comm["status"] == "preparation" and attempts_of(comm) == attempt
        assert next_attempt_at(comm) == err.value.retry_at
        calls = len(sms.sent)
        with pytest.raises(TransientDeliveryError) as early:  # a replay inside the backoff waits too
            deliver(store, channels, req, clock)
        assert len(sms.sent) == calls and early.value.retry_at == err.value.retry_at
        clock.advance(backoff(attempt))
    outcome = deliver(store, channels, req, clock)
    assert outcome.status == "sent" and outcome.channel == "email"
    given_up = store.read("Communication", outcome.failed_before[0])
    assert given_up["status"] == "not-done" and "gave up after 3 attempts" in given_up["statusReason"]["text"]


def test_backoff_grows_and_is_capped() -> None:
    assert [backoff(n) for n in (1, 2, 3)] == [timedelta(seconds=30), timedelta(minutes=1), timedelta(minutes=2)]
    assert backoff(30) == timedelta(hours=1)
