"""Reading times keep .NET's 100-ns resolution through grouping, identity and effective time.

MedTech's own case: the IoT Hub test input's `iothub-creation-time-utc` is
`2019-01-30T22:45:02.6073744Z`; MedTech's DateTime keeps all seven digits.
"""

from __future__ import annotations

import copy
import hashlib
import pickle
from datetime import UTC, datetime, timedelta

import pytest

from ingest.templates import SERVICE_SYSTEM, Measurement, group_measurements, load_device_templates
from ingest.templates.instant import Instant, parse_iso, ticks_of

from .conftest import INGESTED, compat_input, load_json
from .test_fhir_observation import HR_QUANTITY, HR_SAMPLED, changes, fhir, measurement

A = "2019-01-30T22:45:02.6073744Z"
B = "2019-01-30T22:45:02.6073745Z"  # 100 ns later


def at(text: str) -> datetime:
    return parse_iso(text).astimezone(UTC)


def test_iot_hub_case_keeps_the_tick_in_effective_time_and_medtech_identity(compat_dir) -> None:
    templates = load_device_templates(compat_input("data_IotJsonPathContentTemplateValid.json"))
    (m,) = templates.normalize_envelope(load_json(compat_input("data_IotHubPayloadExample.json")),
                                        ingested_at=INGESTED).measurements
    (change,) = changes(fhir(HR_QUANTITY), [m], patient="patient1", device="device1")
    assert change.resource["effectivePeriod"] == {"start": A, "end": A}
    value = "patient1.device1.heartrate.20190130224502Z.20190130224502Z"  # seconds, as MedTech's id segment
    assert change.identifier == (SERVICE_SYSTEM, value)
    assert change.id == hashlib.sha256(f"{SERVICE_SYSTEM}_{value}".encode()).hexdigest()
    assert Measurement.from_dict(m.to_dict()).occurrence_time == m.occurrence_time


def test_two_readings_100_ns_apart_stay_two_readings() -> None:
    first, second = measurement(at=at(A), hr=60), measurement(at=at(B), hr=61)
    (group,) = group_measurements([first, second])
    assert [m.value("hr") for m in group.measurements] == ["60", "61"]
    # Single: MedTech's identifier has seconds, so both fold into one Observation whose period
    # covers both readings, the later value replacing the earlier (its merge).
    (change,) = changes(fhir(HR_QUANTITY), [second, first])
    assert change.resource["effectivePeriod"] == {"start": A, "end": B}
    assert change.resource["valueQuantity"]["value"] == 61


def test_correlation_window_and_sampled_slots_in_ticks() -> None:
    template = {**HR_SAMPLED, "periodInterval": -1,
                "value": {**HR_SAMPLED["value"], "defaultPeriod": 0.0001}}  # one slot per tick
    ms = [measurement(at=at(A), correlation="c1", hr=60), measurement(at=at(B), correlation="c1", hr=61)]
    (change,) = changes(fhir(template), ms)
    assert change.resource["effectivePeriod"] == {"start": A, "end": B}
    assert change.resource["valueSampledData"]["data"] == "60 61"


def test_hourly_window_ends_one_tick_before_the_next_and_replays_are_noops() -> None:
    templates = fhir(HR_SAMPLED)
    (created,) = changes(templates, [measurement(at=at(A), hr=60)])
    assert created.resource["effectivePeriod"] == {
        "start": "2019-01-30T22:00:00Z",
        "end": "2019-01-30T22:59:59.9999999Z",
    }
    stored = {created.id: created.resource}
    (replay,) = changes(templates, [measurement(at=at(A), hr=60)], existing=stored)
    assert replay.action == "noop"
    (later,) = changes(templates, [measurement(at=at(B) + timedelta(minutes=1), hr=70)], existing=stored)
    assert later.action == "update" and later.resource["effectivePeriod"] == created.resource["effectivePeriod"]


@pytest.mark.parametrize(("text", "expected"), [
    (A, "2019-01-30T22:45:02.6073744+00:00"),
    ("2019-01-30T22:45:02.60737445Z", "2019-01-30T22:45:02.6073744+00:00"),  # half to even
    ("2019-01-30T22:45:02.60737455Z", "2019-01-30T22:45:02.6073746+00:00"),
    ("2019-01-30T22:45:02.99999999Z", "2019-01-30T22:45:03+00:00"),
    ("2019-01-30T23:45:02.6073744+01:00", "2019-01-30T22:45:02.6073744+00:00"),
    ("2019-01-30T22:45:02.5Z", "2019-01-30T22:45:02.500000+00:00"),
])
def test_parse_keeps_seven_digits(text, expected) -> None:
    assert at(text).isoformat() == expected


def test_instant_behaves_as_a_datetime_ordered_by_ticks() -> None:
    a, b, plain = at(A), at(B), datetime(2019, 1, 30, 22, 45, 2, 607374, tzinfo=UTC)
    assert plain < a < b and a != plain and len({a, b, plain}) == 3
    assert ticks_of(b) - ticks_of(a) == 1 and Instant.from_ticks(ticks_of(a)) == a
    assert (a + timedelta(hours=1)).isoformat() == "2019-01-30T23:45:02.6073744+00:00"
    assert a.replace(minute=0, second=0, microsecond=0) == datetime(2019, 1, 30, 22, tzinfo=UTC)
    assert pickle.loads(pickle.dumps(a)) == a == copy.deepcopy(a)
    assert Instant.of(plain) == plain and hash(Instant.of(plain)) == hash(plain)
