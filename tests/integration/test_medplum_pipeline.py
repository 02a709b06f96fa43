"""The whole pipeline on a third-party FHIR server: Vigil with `VIGIL_FHIR_URL` on Medplum's FHIR
router (tests/medplum/), events from the `_lastUpdated` polling source (`pull_fhir_changes`), run
through the local host as `vigil serve` runs it. The same input goes through an embedded run (the
SQLite store and its outbox); both must store every reading once and open the same alerts.

A crisis reading opens one episode; with no acknowledgement the escalation advances to the
physician; the physician's link acknowledges and the chain stops; a replay of every change and of
the device messages adds nothing. Then the rest-hook receiver, fed notifications shaped as a
subscribing server posts them (Medplum's server sends the changed resource as the body).

Medplum stamps `meta.lastUpdated` with the wall clock, while Vigil runs on a test clock set to a
daytime instant (patient texts wait out quiet hours): the cursor is placed from the wall clock
before Vigil's clock moves to that daytime, which is ahead of the wall clock."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.clock import FixedClock
from fhirstore.paging import search_all
from fhirstore.polling_source import Cursor, FhirCursorStore, PollingSource
from handlers.acknowledge import acknowledge_by_token
from runtime.bootstrap import install, messaging
from runtime.checks import server_capability_warnings
from runtime.event_sources import event_source
from runtime.host import LocalHost
from runtime.http_server import running_server
from tests.support.medplum import TRANSACTION_SIZE, MedplumServer
from tests.support.pipeline import add_patient, make_host, reading

PATIENT_PHONE = "+15550100001"
NURSE_PHONE = "+15550100201"
DOCTOR_PHONE = "+15550100202"


def next_daytime() -> datetime:
    """The next 15:00 UTC (10:00 in the test patients' zone) at least 10 minutes after the wall clock."""
    now = datetime.now(UTC)
    day = now.replace(hour=15, minute=0, second=0, microsecond=0)
    return day if day - now >= timedelta(minutes=10) else day + timedelta(days=1)


def messages() -> list[bytes]:
    """A day of one patient's readings: two ordinary ones, then a hypertensive crisis; 12 heart
    rates so ingest's transaction is larger than one chunk on the Medplum router."""
    out = [reading("p1", "blood_pressure", "2026-01-01T00:00:00Z", {"systolic": 128, "diastolic": 82})]
    out += [reading("p1", "heart_rate", f"2026-01-01T00:{m:02}:00Z", {"bpm": 70 + m}) for m in range(12)]
    out.append(reading("p1", "blood_pressure", "2026-01-01T00:30:00Z", {"systolic": 186, "diastolic": 112}))
    return out


def at(t0: datetime, body: bytes) -> bytes:
    """The message with its time moved to the run's day (readings a few minutes before t0)."""
    msg = json.loads(body)
    offset = datetime.fromisoformat(msg["time"].replace("Z", "+00:00")) - datetime(2026, 1, 1, tzinfo=UTC)
    msg["time"] = (t0 - timedelta(hours=1) + offset).isoformat()
    return json.dumps(msg).encode()


def enrol(host: LocalHost) -> None:
    s = host.services
    add_patient(s, "p1", phone=PATIENT_PHONE, programs=("hypertension",))
    for pid, phone in (("nurse-1", NURSE_PHONE), ("doctor-1", DOCTOR_PHONE)):
        s.store.update({"resourceType": "Practitioner", "id": pid, "telecom": [{"system": "sms", "value": phone}]})
    s.store.update({"resourceType": "CareTeam", "id": "team-p1", "status": "active",
                    "subject": {"reference": "Patient/p1"}, "participant": [
                        {"role": [{"coding": [{"code": "nurse"}]}], "member": {"reference": "Practitioner/nurse-1"}},
                        {"role": [{"coding": [{"code": "physician"}]}],
                         "member": {"reference": "Practitioner/doctor-1"}}]})


def texts(host: LocalHost, number: str) -> list[str]:
    return [m["body"] for m in host.services.channels["outbox"].provider.messages() if m["to"] == number]


def token_in(text: str) -> str:
    match = re.search(r"/api/ack/([^\s]+)", text)
    assert match, "the escalation text carries an acknowledgement link"
    return match.group(1).rstrip(".")


def alerts(host: LocalHost) -> list[tuple[str, str]]:
    store = host.services.store
    out = []
    for issue in search_all(store, "DetectedIssue", {"patient": "Patient/p1"}):
        task = store.read("Task", issue["id"])
        out.append((issue["code"]["coding"][0]["code"], task["status"]))
    return sorted(out)


def stored_readings(host: LocalHost) -> Counter[str]:
    """Observations by LOINC code (a reading stored twice counts twice)."""
    found = search_all(host.services.store, "Observation", {"subject": "Patient/p1", "_count": "100"})
    return Counter(o["code"]["coding"][0]["code"] for o in found)


def pull(host: LocalHost) -> None:
    host.run_timer("pull_fhir_changes")
    assert host.run_until_idle(timeout_s=60)


def scenario(host: LocalHost, clock: FixedClock, t0: datetime) -> dict[str, Any]:
    """The same steps on either store. `pull` is a no-op on the embedded store, whose outbox the
    host relays as it runs."""
    s = host.services
    install(s)  # the functions serve the installed services
    enrol(host)
    pull(host)  # places the polling cursor (from the wall clock: clock is still there)
    clock.set(t0)
    # Each device message delivered twice (at-least-once delivery): every reading stored once.
    host.publish_device_messages([at(t0, b) for b in messages()] * 2)
    assert host.run_until_idle(timeout_s=60)
    clock.advance(timedelta(minutes=1))
    pull(host)
    opened = alerts(host)
    assert opened == [("htn-crisis", "requested")]
    [nurse_text] = texts(host, NURSE_PHONE)
    assert texts(host, DOCTOR_PHONE) == []

    # No acknowledgement within the nurse's 15 minutes: the sweep texts the physician.
    clock.advance(timedelta(minutes=16))
    host.run_timer("escalation_sweep")
    [doctor_text] = texts(host, DOCTOR_PHONE)
    [issue] = search_all(s.store, "DetectedIssue", {"patient": "Patient/p1"})
    task = s.store.read("Task", issue["id"])
    assert task["businessStatus"]["coding"][0]["code"] == "level-2"

    # The physician's link acknowledges; the chain stops.
    result = acknowledge_by_token(messaging(s), token_in(doctor_text))
    assert result.status == 200
    task = s.store.read("Task", issue["id"])
    assert (task["status"], task["owner"]) == ("accepted", {"reference": "Practitioner/doctor-1"})
    sent = len(s.channels["outbox"].provider.messages())
    clock.advance(timedelta(hours=3))
    host.run_timer("escalation_sweep")
    assert len(s.channels["outbox"].provider.messages()) == sent

    # A replay: the device messages again, and (polling) every change from before the start.
    host.publish_device_messages([at(t0, b) for b in messages()])
    assert host.run_until_idle(timeout_s=60)
    source = event_source(s)
    if isinstance(source, PollingSource):
        cursors = FhirCursorStore(s.store)
        for rtype in source.types:
            cursors.save(source.name, rtype, Cursor(datetime.now(UTC) - timedelta(hours=1)))
    clock.advance(timedelta(minutes=1))
    pull(host)
    assert len(s.channels["outbox"].provider.messages()) == sent
    return {"alerts": alerts(host), "readings": stored_readings(host), "texts": {
        who: len(texts(host, number)) for who, number in
        (("patient", PATIENT_PHONE), ("nurse", NURSE_PHONE), ("doctor", DOCTOR_PHONE))},
        "nurse_text": "ACK " in nurse_text}


@pytest.fixture
def on_medplum(medplum: MedplumServer, tmp_path: Path) -> Iterator[tuple[LocalHost, FixedClock]]:
    medplum.reset()
    clock = FixedClock(datetime.now(UTC))
    host = make_host(tmp_path / "vigil", clock=clock, fhir_url=medplum.url, fhir_transaction_size=TRANSACTION_SIZE)
    host.acquire()
    install(host.services)
    yield host, clock
    install(None)
    host.release()
    host.services.close()


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[tuple[LocalHost, FixedClock]]:
    clock = FixedClock(datetime.now(UTC))
    host = make_host(tmp_path / "embedded", clock=clock)
    host.acquire()
    install(host.services)
    yield host, clock
    install(None)
    host.release()
    host.services.close()


def test_the_pipeline_on_medplum_matches_the_embedded_run(on_medplum, embedded) -> None:
    t0 = next_daytime()
    host, clock = on_medplum
    assert isinstance(event_source(host.services), PollingSource)
    got = scenario(host, clock, t0)
    expected = scenario(*embedded, t0)
    assert got == expected
    assert got["readings"] == Counter({"85354-9": 2, "8867-4": 12})  # every reading stored once
    assert got["alerts"] == [("htn-crisis", "accepted")]
    assert got["texts"]["doctor"] == 1 and got["texts"]["nurse"] >= 1
    # Medplum does not know `escalation-due`: said at start, and the sweep read every open Task.
    [warning] = server_capability_warnings(host.services)
    assert "does not support Vigil's Task search parameter 'escalation-due'" in warning
    assert server_capability_warnings(embedded[0].services) == []


TOKEN = "local-test-token"


@pytest.fixture
def rest_hook(medplum: MedplumServer, tmp_path: Path) -> Iterator[tuple[LocalHost, FixedClock, str]]:
    """Vigil with the rest-hook source on Medplum, its HTTP endpoints served as `vigil serve` does."""
    medplum.reset()
    clock = FixedClock(datetime.now(UTC))
    host = make_host(tmp_path / "vigil", clock=clock, fhir_url=medplum.url, fhir_transaction_size=TRANSACTION_SIZE,
                     event_source="rest-hook", subscription_endpoint="http://127.0.0.1:9/api/fhir-notify",
                     local_token=TOKEN)
    host.acquire()
    install(host.services)
    with running_server(host, TOKEN) as url:
        # Where the FHIR server reaches Vigil: known once the server listens.
        host.services.settings.__dict__["subscription_endpoint"] = f"{url}/api/fhir-notify"
        yield host, clock, url
    install(None)
    host.release()
    host.services.close()


def send_as_subscribing_server(store: Any, subscription_id: str, resource: dict[str, Any] | None) -> httpx.Response:
    """What a server's rest-hook delivery does with a Subscription it holds (FHIR R4 §2.46.7.1, the
    Medplum server's webhooks): POST the changed resource (or nothing, a ping) to `channel.endpoint`
    with the `channel.header` lines as HTTP headers."""
    sub = store.read("Subscription", subscription_id)
    channel = sub["channel"]
    headers = dict(line.split(": ", 1) for line in channel.get("header", []))
    headers["Content-Type"] = channel.get("payload") or "application/fhir+json"
    body = json.dumps(resource).encode() if resource is not None and channel.get("payload") else b""
    return httpx.post(channel["endpoint"], content=body, headers=headers, timeout=30)


def test_rest_hook_notifications_on_medplum(rest_hook) -> None:
    """Vigil's Subscriptions are created on Medplum (which keeps them `requested`: the router runs
    none); notifications are posted to `vigil serve` as a subscribing server sends them, from the
    Subscription stored on Medplum: the changed resource as the body; an empty ping runs the
    polling fallback; a redelivery adds nothing; a notification without the key is refused."""
    host, clock, url = rest_hook
    s = host.services
    enrol(host)
    host.run_timer("pull_fhir_changes")  # creates the Subscriptions
    subs = {sub["id"]: sub for sub in search_all(s.store, "Subscription", {})}
    assert set(subs) == {"vigil-observation", "vigil-questionnaireresponse"}
    assert subs["vigil-observation"]["channel"]["endpoint"] == f"{url}/api/fhir-notify"
    ping = send_as_subscribing_server(s.store, "vigil-observation", None)
    assert (ping.status_code, ping.json()) == (200, {"kind": "ping", "delivered": 0})  # places the cursor

    t0 = next_daytime()
    clock.set(t0)
    host.publish_device_messages([at(t0, messages()[-1])])
    assert host.run_until_idle(timeout_s=60)
    [obs] = search_all(s.store, "Observation", {"subject": "Patient/p1"})
    assert alerts(host) == []  # nothing delivered it yet
    sent = send_as_subscribing_server(s.store, "vigil-observation", obs)
    assert (sent.status_code, sent.json()) == (200, {"kind": "resource", "delivered": 1})
    assert alerts(host) == [("htn-crisis", "requested")]
    texts_sent = len(s.channels["outbox"].provider.messages())
    assert send_as_subscribing_server(s.store, "vigil-observation", obs).status_code == 200  # a retry
    clock.advance(timedelta(minutes=1))
    ping = send_as_subscribing_server(s.store, "vigil-observation", None)
    assert (ping.status_code, ping.json()) == (200, {"kind": "ping", "delivered": 1})  # the same change, found
    assert alerts(host) == [("htn-crisis", "requested")]
    assert len(s.channels["outbox"].provider.messages()) == texts_sent
    refused = httpx.post(f"{url}/api/fhir-notify", content=json.dumps(obs).encode(),
                         headers={"Content-Type": "application/fhir+json"}, timeout=30)
    assert refused.status_code == 401
