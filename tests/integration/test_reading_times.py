"""Readings dated beyond the allowed clock skew into the future are dead-lettered; old ones are kept."""

from __future__ import annotations

from pathlib import Path

from fhirstore.paging import search_all
from tests.support.pipeline import add_patient, make_host, reading

# The host's clock: 2026-11-20T15:00:00Z (tests/support/pipeline.py DAYTIME).


def _run(data_dir: Path, messages: list[bytes], **settings: object):
    host = make_host(data_dir, **settings)
    host.acquire()
    try:
        add_patient(host.services, "p1")
        host.publish_device_messages(messages)
        assert host.run_until_idle(timeout_s=60)
        s = host.services
        return (search_all(s.store, "Observation", {"subject": "Patient/p1"}),
                [d for d in s.dead_letters.list()])
    finally:
        host.release()
        host.services.close()


def test_a_reading_dated_months_ahead_is_dead_lettered_and_the_batch_goes_on(tmp_path: Path) -> None:
    obs, letters = _run(tmp_path, [
        reading("p1", "heart_rate", "2027-03-01T08:00:00-05:00", {"bpm": 70}),   # a device clock gone wrong
        reading("p1", "heart_rate", "2026-11-20T15:10:00Z", {"bpm": 71}),        # 10 min ahead: clock drift
        reading("p1", "heart_rate", "2025-11-20T08:00:00-05:00", {"bpm": 72}),   # a year-old backfill
    ])
    assert sorted(o["valueQuantity"]["value"] for o in obs) == [71, 72]
    [letter] = letters
    assert letter.reason == "future_reading"
    assert "100 day(s)" in letter.detail and "VIGIL_MAX_FUTURE_SKEW_S" in letter.detail
    assert "2027" not in letter.detail  # how far ahead, never the date


def test_the_allowed_skew_is_a_setting(tmp_path: Path) -> None:
    obs, letters = _run(tmp_path, [reading("p1", "heart_rate", "2026-11-20T15:10:00Z", {"bpm": 71})],
                        max_future_skew_s=60.0)
    assert obs == []
    assert [d.reason for d in letters] == ["future_reading"]
    assert "10 minute(s) after it arrived" in letters[0].detail and "1 minute(s)" in letters[0].detail


def test_the_setting_is_read_from_the_environment_and_checked() -> None:
    import pytest

    from runtime.settings import Settings, SettingsError

    assert Settings.from_env({"VIGIL_MAX_FUTURE_SKEW_S": "300"}).max_future_skew_s == 300.0
    assert Settings.from_env({}).max_future_skew_s == 900.0
    with pytest.raises(SettingsError, match="VIGIL_MAX_FUTURE_SKEW_S"):
        Settings.from_env({"VIGIL_MAX_FUTURE_SKEW_S": "-1"})
