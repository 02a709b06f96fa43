"""The send ledger's claim protocol, on both durable adapters."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest

from fhirstore.sqlite import SqliteFhirStore
from notifications.channels.ledger import FhirSendLedger, MemorySendLedger, SqliteSendLedger


@pytest.fixture(params=["sqlite", "fhir", "memory"])
def ledger(request, tmp_path: Path, clock):
    if request.param == "sqlite":
        led = SqliteSendLedger(tmp_path / "sends.db")
        yield led
        led.close()
    elif request.param == "fhir":
        store = SqliteFhirStore(tmp_path / "fhir.db", clock=clock)
        yield FhirSendLedger(store)
        store.close()
    else:
        yield MemorySendLedger()


def test_claim_lifecycle(ledger, clock) -> None:
    now = clock.now()
    assert ledger.claim("sms:m1", now).state == "new"
    assert ledger.claim("sms:m1", now + timedelta(seconds=30)).state == "in-flight"
    ledger.mark_sent("sms:m1", "Outgoing_1", now)
    claim = ledger.claim("sms:m1", now + timedelta(days=3))
    assert (claim.state, claim.provider_id) == ("sent", "Outgoing_1")
    ledger.release("sms:m1")  # a sent message is never released
    assert ledger.lookup("sms:m1").state == "sent"


def test_an_unfinished_claim_becomes_in_doubt_after_the_lease(ledger, clock) -> None:
    now = clock.now()
    ledger.claim("sms:m2", now)
    claim = ledger.claim("sms:m2", now + timedelta(minutes=3))
    assert claim.state == "in-doubt" and "expired" in claim.reason
    assert ledger.claim("sms:m2", now + timedelta(minutes=4)).state == "in-doubt"
    ledger.mark_sent("sms:m2", "from-delivery-report", now)  # a delivery report resolves it
    assert ledger.claim("sms:m2", now).state == "sent"


def test_release_allows_a_new_attempt(ledger, clock) -> None:
    ledger.claim("smtp:m3", clock.now())
    ledger.release("smtp:m3")
    assert ledger.lookup("smtp:m3") is None
    assert ledger.claim("smtp:m3", clock.now()).state == "new"


def test_sqlite_claims_are_exclusive_across_connections(tmp_path: Path, clock) -> None:
    path = tmp_path / "sends.db"
    results: list[str] = []

    def worker() -> None:
        led = SqliteSendLedger(path)  # its own connection, like another process
        results.append(led.claim("sms:race", clock.now()).state)
        led.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["in-flight"] * 7 + ["new"]
