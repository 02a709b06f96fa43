"""Property: no FHIR event or ACS event payload makes its handler raise; bad ones are dead-lettered.

The handlers run against the real embedded pipeline (SQLite FHIR store, dead-letter store, file
outbox). Payloads are near-valid events with fields replaced by arbitrary or hostile values
(lone surrogates, 5,000-digit integers, nesting, out-of-range times) and arbitrary JSON values.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.acs_events import handle_acs_event
from handlers.fhir_events import handle_fhir_event
from runtime.bootstrap import acs_deps, event_deps
from tests.support.pipeline import add_patient, make_host

_BIG = 10**4500 - 1  # more digits than int->str converts (sys.get_int_max_str_digits)
_DEEP: list = []
for _ in range(200):  # nested lists (hypothesis prints failing examples: deeper would break its printer)
    _DEEP = [_DEEP]

hostile = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(
        [
            "",
            "x\ud800",
            "9999-12-31T23:59:59-23:59",
            "0001-01-01T00:00:00+14:00",
            "Observation",
            "Patient",
            "../..",
            "+15550100001",
            "ACK 123456",
            "STOP",
            "Delivered",
            "Failed",
            _BIG,
            "Observation/obs-1",
            "A" * 5000,
        ]
    ),
    st.just(_DEEP),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)

FHIR_EVENT = {"id": "e1", "eventType": "Microsoft.HealthcareApis.FhirResourceUpdated", "subject": "x/Observation/o1",
              "eventTime": "2026-11-20T12:00:00Z", "dataVersion": "1",
              "data": {"resourceType": "Observation", "resourceFhirAccount": "local", "resourceFhirId": "o1",
                       "resourceVersionId": 1}}
SMS = {"id": "s1", "eventType": "Microsoft.Communication.SMSReceived", "subject": "/phonenumber/15550100001",
       "eventTime": "2026-11-20T12:00:00Z",
       "data": {"MessageId": "m1", "From": "+15550100001", "To": "+15550100999", "Message": "STOP",
                "ReceivedTimestamp": "2026-11-20T12:00:00Z"}}
REPORT = {"id": "r1", "eventType": "Microsoft.Communication.SMSDeliveryReportReceived", "subject": "x",
          "eventTime": "2026-11-20T12:00:00Z",
          "data": {"MessageId": "m1", "From": "+15550100999", "To": "+15550100001", "DeliveryStatus": "Failed",
                   "DeliveryStatusDetails": "x", "ReceivedTimestamp": "2026-11-20T12:00:00Z"}}


@st.composite
def near(draw: st.DrawFn, template: dict) -> object:
    if draw(st.integers(0, 9)) == 0:
        return draw(hostile)
    event = json.loads(json.dumps(template))
    for _ in range(draw(st.integers(1, 3))):
        where = event if draw(st.booleans()) or not isinstance(event.get("data"), dict) else event["data"]
        key = draw(st.sampled_from(sorted(where) or ["x"]))
        where[key] = draw(hostile)
    return event


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory):
    host = make_host(Path(tmp_path_factory.mktemp("events")))
    add_patient(host.services, "p1")
    yield host.services
    host.services.close()


LENIENT = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@LENIENT
@given(st.one_of(near(FHIR_EVENT), near({**FHIR_EVENT, "eventType": "Microsoft.HealthcareApis.FhirResourceCreated"})))
def test_no_fhir_event_payload_escapes_the_handler(services, payload) -> None:
    before = services.dead_letters.count(include_replayed=True)
    outcome = handle_fhir_event(payload, event_deps(services))  # must not raise
    assert outcome.status in {"evaluated", "scored", "not-enrolled", "ignored", "gone", "dead-lettered"}
    if outcome.status == "dead-lettered":
        [letter] = services.dead_letters.list(include_replayed=True, limit=100_000)[before:] or [None]
        assert letter is None or (letter.reason and letter.detail)


@LENIENT
@given(st.one_of(near(SMS), near(REPORT)))
def test_no_acs_event_payload_escapes_the_handler(services, payload) -> None:
    outcome = handle_acs_event(payload, acs_deps(services))  # must not raise
    if outcome.action == "dead-lettered":
        letter = services.dead_letters.list(limit=100_000)[-1]
        assert letter.reason and letter.detail
