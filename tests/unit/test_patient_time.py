"""One reading of a patient's time zone for rule windows and for messages (common.patient_time)."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from common.patient_time import TIME_ZONE_EXTS, days_with_readings, patient_time_zone, patient_time_zone_name
from notifications.preferences import PreferenceDefaults, patient_recipient
from rules.enrollment import patient_context


def _patient(*extensions: tuple[str, str]) -> dict:
    return {"resourceType": "Patient", "id": "p1",
            "extension": [{"url": url, "valueCode": code} for url, code in extensions]}


@pytest.mark.parametrize("url", TIME_ZONE_EXTS)
def test_each_accepted_form_gives_the_same_zone_to_rules_and_to_messages(url: str) -> None:
    patient = _patient((url, "America/Denver"))
    assert patient_time_zone_name(patient) == "America/Denver"
    ctx, _ = patient_context("Patient/p1", now=datetime(2026, 1, 1, tzinfo=UTC), rulesets=[], patient=patient)
    recipient = patient_recipient(patient, PreferenceDefaults(time_zone="Europe/Paris"))
    assert str(ctx.tz) == recipient.time_zone == "America/Denver"


def test_the_fhir_tz_code_form_reaches_rule_windows() -> None:
    # A patient recorded with tz-code once got calendar-day windows in UTC and quiet hours locally.
    patient = _patient(("http://hl7.org/fhir/StructureDefinition/tz-code", "Asia/Tokyo"))
    ctx, _ = patient_context("Patient/p1", now=datetime(2026, 1, 1, tzinfo=UTC), rulesets=[], patient=patient)
    assert ctx.tz == ZoneInfo("Asia/Tokyo")


def test_forms_are_tried_in_order_and_an_unknown_zone_falls_through(caplog: pytest.LogCaptureFixture) -> None:
    both = _patient((TIME_ZONE_EXTS[1], "Asia/Tokyo"), (TIME_ZONE_EXTS[0], "Europe/Madrid"))
    assert patient_time_zone_name(both) == "Europe/Madrid"
    with caplog.at_level(logging.WARNING):
        bad = _patient((TIME_ZONE_EXTS[0], "Mars/Olympus"), (TIME_ZONE_EXTS[2], "America/Chicago"))
        assert patient_time_zone(bad) == ZoneInfo("America/Chicago")
    assert "unknown time zone" in caplog.text and "Mars" not in caplog.text
    assert patient_time_zone_name(_patient(), "Europe/Rome") == "Europe/Rome"
    assert patient_time_zone_name(None) == "UTC"
    with pytest.raises(ValueError, match="not an IANA"):
        patient_time_zone(None, "Nowhere/Land")


def test_rules_and_messages_share_the_default_zone_of_a_patient_without_one() -> None:
    ctx, _ = patient_context("Patient/p1", now=datetime(2026, 1, 1, tzinfo=UTC), rulesets=[], patient=_patient(),
                             default_tz="America/New_York")
    assert str(ctx.tz) == patient_recipient(_patient(), PreferenceDefaults(time_zone="America/New_York")).time_zone


def test_days_with_readings_counts_local_calendar_days_not_readings() -> None:
    chicago = ZoneInfo("America/Chicago")
    times = [datetime(2026, 3, 1, 23, 30, tzinfo=chicago),  # 05:30 UTC on 2 March, still 1 March locally
             datetime(2026, 3, 2, 7, 0, tzinfo=chicago), datetime(2026, 3, 2, 7, 5, tzinfo=chicago),
             datetime(2026, 3, 8, 1, 30, tzinfo=chicago)]  # the night the clocks spring forward
    assert days_with_readings(times, chicago) == [date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 8)]
    assert days_with_readings(times, UTC) == [date(2026, 3, 2), date(2026, 3, 8)]
    assert days_with_readings(times, chicago, first=date(2026, 3, 2), last=date(2026, 3, 7)) == [date(2026, 3, 2)]
    thirty = [datetime(2026, 3, 1, 8, tzinfo=chicago) + timedelta(days=d) for d in range(0, 30, 2)]
    assert len(days_with_readings(thirty, chicago)) == 15  # 99445 range (2-15 days), not 99454 (16-30)
