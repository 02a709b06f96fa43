"""An enrollment's dates are days in the patient's time zone (DESIGN §5: calendar concepts in the
patient's zone), as the rules read every other calendar concept: the console writes them as that
zone's midnight and end of day, not as UTC days."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from console.billing import enrollment_spans
from console.enrollment import end_enrollment, enroll
from fhirstore.sqlite import SqliteFhirStore
from rules.enrollment import careplan_active
from rules.loader import load_rulesets
from runtime.settings import DEFAULT_RULES

TZ_EXT = "http://hl7.org/fhir/StructureDefinition/timezone"


def test_an_enrollment_day_starts_and_ends_in_the_patients_zone(tmp_path: Path) -> None:
    rulesets = load_rulesets([DEFAULT_RULES])
    with SqliteFhirStore(tmp_path / "fhir.db") as store:
        store.update({"resourceType": "Patient", "id": "tokyo", "active": True,
                      "extension": [{"url": TZ_EXT, "valueCode": "Asia/Tokyo"}]})
        plan = enroll(store, rulesets, "tokyo", "hypertension", date(2026, 11, 20))
        # 01:30 in Tokyo on the 20th (16:30 UTC on the 19th): the first enrolled day has begun there.
        assert careplan_active(plan, datetime(2026, 11, 19, 16, 30, tzinfo=UTC))
        assert not careplan_active(plan, datetime(2026, 11, 19, 14, 30, tzinfo=UTC))  # 23:30 on the 19th there
        ended = end_enrollment(store, "tokyo", "hypertension", date(2026, 11, 25), rulesets=rulesets)
        ended["status"] = "active"  # the period alone: the last day ends at midnight in Tokyo
        assert careplan_active(ended, datetime(2026, 11, 25, 14, 30, tzinfo=UTC))  # 23:30 on the 25th there
        assert not careplan_active(ended, datetime(2026, 11, 25, 15, 30, tzinfo=UTC))  # 00:30 on the 26th
        # Billing reads the same days.
        assert enrollment_spans([ended]) == [(date(2026, 11, 20), date(2026, 11, 25))]


def test_enrolling_today_in_the_evening_west_of_utc_is_active_at_once(tmp_path: Path) -> None:
    """At 21:00 in Chicago it is already tomorrow in UTC: "today" is the patient's date, so an
    enrollment started now is active now (not from the next local midnight)."""
    from console.enrollment import patient_today

    now = datetime(2026, 11, 21, 3, 0, tzinfo=UTC)  # 21:00 on the 20th in Chicago
    with SqliteFhirStore(tmp_path / "fhir.db") as store:
        store.update({"resourceType": "Patient", "id": "chi", "active": True,
                      "extension": [{"url": TZ_EXT, "valueCode": "America/Chicago"}]})
        today = patient_today(store, "chi", now)
        assert today == date(2026, 11, 20)
        plan = enroll(store, load_rulesets([DEFAULT_RULES]), "chi", "hypertension", today)
        assert careplan_active(plan, now)
