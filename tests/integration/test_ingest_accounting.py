"""Every received device message ends written, superseded by a written one, or dead-lettered.

Real embedded stores on temporary files; figures are read back from the stores, not only from the
handler's report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from fhirstore.errors import FhirError
from fhirstore.sqlite import SqliteFhirStore
from handlers.ingest import IngestDeps, RawMessage, handle_device_messages
from runtime.bootstrap import ingest_deps, install
from tests.support.pipeline import add_patient, count, make_host, reading
from triggers.http_api import http_ingest

T = "2026-11-20T09:00:00Z"


@pytest.fixture
def host(data_dir: Path):
    host = make_host(data_dir)
    add_patient(host.services, "p1")
    yield host
    host.services.close()


def hr(bpm: Any, time: str = T, device: str | None = None, **extra: Any) -> RawMessage:
    return RawMessage(reading("p1", "heart_rate", time, {"bpm": bpm, **extra}, device_id=device))


def stored_bpm(host) -> list[float]:
    found = host.services.store.search("Observation", {"code": "http://loinc.org|8867-4"}).resources
    return sorted(o["valueQuantity"]["value"] for o in found)


def letters(host) -> list[tuple[str, bytes]]:
    return [(d.reason, d.payload) for d in host.services.dead_letters.list()]


def test_an_invalid_later_reading_does_not_erase_the_valid_earlier_one(host) -> None:
    valid, invalid = hr(60), hr(999)
    report = handle_device_messages([valid, invalid], ingest_deps(host.services))
    assert report.outcomes == ["written", "dead_lettered"]
    assert (report.received, report.written, report.superseded, report.dead_lettered, report.created) == (2, 1, 0, 1, 1)
    assert stored_bpm(host) == [60]
    assert letters(host) == [("out_of_range", invalid.body)]


def test_an_invalid_earlier_reading_is_dead_lettered_even_though_a_later_one_replaces_it(host) -> None:
    invalid, valid = hr(999), hr(61)
    report = handle_device_messages([invalid, valid], ingest_deps(host.services))
    assert report.outcomes == ["dead_lettered", "written"]
    assert stored_bpm(host) == [61] and letters(host) == [("out_of_range", invalid.body)]


def test_a_later_valid_reading_supersedes_and_an_invalid_one_after_it_changes_nothing(host) -> None:
    batch = [hr(60), hr(70), hr(999)]
    report = handle_device_messages(batch, ingest_deps(host.services))
    assert report.outcomes == ["superseded", "written", "dead_lettered"]
    assert stored_bpm(host) == [70]
    assert report.as_dict()["unaccounted"] == 0


def test_identical_messages_from_a_registered_device_one_written_the_rest_superseded(host) -> None:
    report = handle_device_messages([hr(64)] * 50, ingest_deps(host.services))
    assert (report.written, report.superseded, report.dead_lettered, report.created) == (1, 49, 0, 1)
    assert stored_bpm(host) == [64]


def test_every_message_from_an_unregistered_device_is_dead_lettered(host) -> None:
    batch = [hr(64, device="nobody-dev"), hr(64, device="nobody-dev"), hr(65, device="nobody-dev")]
    report = handle_device_messages(batch, ingest_deps(host.services))
    assert report.outcomes == ["dead_lettered"] * 3
    assert report.reasons == {"unknown_device": 3}
    # Identical payloads failing the same way are one stored dead letter (re-delivery is idempotent).
    assert sorted(p for _, p in letters(host)) == sorted({m.body for m in batch})


def test_a_message_dead_lettered_for_one_reading_contributes_none_of_its_readings(host) -> None:
    """The cuff's message carries blood pressure and an implausible pulse: none of it is written, and
    the heart-rate reading it would have replaced is written instead."""
    earlier = hr(72)
    cuff = RawMessage(reading("p1", "blood_pressure", T, {"systolic": 120, "diastolic": 80, "pulse": 999}))
    report = handle_device_messages([earlier, cuff], ingest_deps(host.services))
    assert report.outcomes == ["written", "dead_lettered"]
    assert stored_bpm(host) == [72]
    assert count(host.services, "Observation", code="http://loinc.org|85354-9") == 0


class RefusingStore(SqliteFhirStore):
    """The real store, but the server refuses (422) any Observation holding the given heart rate."""

    refused = 70.0

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        if any(self._refuses(e["resource"]) for e in bundle["entry"]):
            raise FhirError("unprocessable", status=422)
        return super().transaction(bundle)

    def update(self, resource: dict[str, Any], **kwargs: Any):
        if self._refuses(resource):
            raise FhirError("unprocessable", status=422)
        return super().update(resource, **kwargs)

    def _refuses(self, resource: dict[str, Any]) -> bool:
        return (resource.get("valueQuantity") or {}).get("value") == self.refused


def test_a_reading_whose_replacement_the_server_refused_is_written_after_all(host, data_dir: Path) -> None:
    store = RefusingStore(data_dir / "fhir.db")
    deps = ingest_deps(host.services)
    deps = IngestDeps(store=store, dead_letters=deps.dead_letters, templates=deps.templates,
                      identity=type(deps.identity)(store), clock=deps.clock)
    first, refused = hr(60), hr(70)
    report = handle_device_messages([first, refused], deps)
    assert report.outcomes == ["written", "dead_lettered"]
    assert stored_bpm(host) == [60]
    assert letters(host) == [("fhir_rejected", refused.body)]


POISON = {
    "nesting_too_deep": b'{"deviceId":"p1-dev","x":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    "number_too_large": reading("p1", "heart_rate", T, {"bpm": 1}).replace(b'"bpm": 1', b'"bpm": ' + b"7" * 4500),
    "invalid_unicode": reading("p1", "heart_rate", T, {"bpm": 60}, device_id="p1\udc00dev"),
    "value_out_of_range": reading("p1", "heart_rate", "9999-12-31T23:59:59-23:59", {"bpm": 60}),
    "invalid_json": b'{"deviceId": "p1-dev", ',
}


def test_poison_on_the_local_bus_is_dead_lettered_with_its_reason_not_retried_to_delivery_failed(host) -> None:
    good = reading("p1", "heart_rate", "2026-11-20T10:00:00Z", {"bpm": 66})
    host.acquire()
    try:
        host.publish_device_messages([*POISON.values(), good])
        assert host.run_until_idle(timeout_s=60)
    finally:
        host.release()
    assert sorted(r for r, _ in letters(host)) == sorted(POISON)
    assert {p for _, p in letters(host)} == set(POISON.values())
    assert stored_bpm(host) == [66]
    assert host.stats.failures.get("ingest_device_messages", 0) == 0


def test_the_http_ingest_route_answers_every_message_outcome(host) -> None:
    install(host.services)
    good = [reading("p1", "heart_rate", "2026-11-20T11:00:00Z", {"bpm": 66}),
            reading("p1", "heart_rate", "2026-11-20T11:00:00Z", {"bpm": 67})]
    body = b"[" + b",\n".join([good[0], POISON["nesting_too_deep"], POISON["number_too_large"], good[1],
                               POISON["invalid_unicode"]]) + b"]"
    resp = http_ingest(func.HttpRequest("POST", "http://localhost/api/ingest", body=body))
    report = json.loads(resp.get_body())
    assert resp.status_code == 207
    assert (report["received"], report["written"], report["superseded"], report["dead_lettered"]) == (5, 1, 1, 3)
    assert report["unaccounted"] == 0 and report["observations"] == {"created": 1, "updated": 0, "unchanged": 0}
    assert report["reasons"] == {"nesting_too_deep": 1, "number_too_large": 1, "invalid_unicode": 1}
    assert stored_bpm(host) == [67]


def test_a_dead_letter_keeps_a_payload_that_is_not_unicode_escaped_and_says_so(host) -> None:
    dl = host.services.dead_letters
    dl.add(topic="t", reason="invalid_event", detail="type \ud800 unknown", payload='{"a": "\ud800"}', source="x")
    [letter] = dl.list()
    assert letter.payload == b'{"a": "\\ud800"}'
    assert letter.properties["payload_escaped"] == "backslashreplace"
    assert "escaped" in letter.detail and "\\ud800" in letter.detail
