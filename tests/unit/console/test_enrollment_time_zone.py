"""An enrollment's dates are days in the patient's time zone (DESIGN §5: calendar concepts in the
patient's zone), as the rules read every other calendar concept: the console writes them as that
zone's midnight and end of day, not as UTC days."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

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


def test_a_bare_date_careplan_period_is_the_patients_day_for_the_rules(tmp_path: Path) -> None:
    """A CarePlan written by another system with bare dates ("2026-11-20") enrolls the patient for
    those calendar days where the patient lives: the rule loading the pipeline runs reads it so."""
    from handlers.patient_data import load_patient_rules

    rulesets = load_rulesets([DEFAULT_RULES])
    plan = {"resourceType": "CarePlan", "id": "la-htn", "status": "active", "intent": "plan",
            "instantiatesCanonical": ["urn:vigil:program:hypertension"], "subject": {"reference": "Patient/la"},
            "period": {"start": "2026-11-20", "end": "2026-11-25"}}
    la = ZoneInfo("America/Los_Angeles")
    # 20:00 on the 19th in Los Angeles is the 20th in UTC: not yet enrolled there; 23:30 on the 25th is.
    before, last_evening, after = (datetime(2026, 11, 20, 4, 0, tzinfo=UTC), datetime(2026, 11, 26, 7, 30, tzinfo=UTC),
                                   datetime(2026, 11, 26, 8, 30, tzinfo=UTC))
    assert not careplan_active(plan, before, la) and careplan_active(plan, before)  # UTC days would say yes
    assert careplan_active(plan, last_evening, la) and not careplan_active(plan, last_evening)
    assert not careplan_active(plan, after, la)
    with SqliteFhirStore(tmp_path / "fhir.db") as store:
        store.update({"resourceType": "Patient", "id": "la", "active": True,
                      "extension": [{"url": TZ_EXT, "valueCode": "America/Los_Angeles"}]})
        store.update(plan)
        assert load_patient_rules(store, "Patient/la", rulesets, before) is None
        enrolled = load_patient_rules(store, "Patient/la", rulesets, last_evening)
        assert enrolled is not None and [rs.program.id for rs in enrolled.rulesets] == ["hypertension"]
        assert enrolled.context.enrolled_since == datetime(2026, 11, 20, tzinfo=la)


def test_a_per_patient_override_is_written_where_the_pipeline_reads_it(tmp_path: Path) -> None:
    from console.enrollment import EnrollmentError, set_override
    from rules.enrollment import overrides_from_careplans
    from rules.quantity import Quantity

    rulesets = load_rulesets([DEFAULT_RULES])
    now = datetime(2026, 11, 21, 18, 0, tzinfo=UTC)
    with SqliteFhirStore(tmp_path / "fhir.db") as store:
        store.update({"resourceType": "Patient", "id": "p", "active": True})
        enroll(store, rulesets, "p", "hypertension", date(2026, 11, 1))
        set_override(store, rulesets, "p", "hypertension", "htn-weekly-mean-above-goal", param="systolic_goal",
                     value="135 mm[Hg]", now=now)
        set_override(store, rulesets, "p", "hypertension", "htn-weekly-mean-above-goal", param="systolic_goal",
                     value="140 mm[Hg]", now=now)  # replaces, not adds
        plan = set_override(store, rulesets, "p", "hypertension", "htn-crisis", disabled=True, now=now)
        overrides, problems = overrides_from_careplans([plan], rulesets, now)
        assert problems == []
        assert overrides["htn-weekly-mean-above-goal"].params == {"systolic_goal": Quantity(140.0, "mm[Hg]")}
        assert overrides["htn-crisis"].disabled
        for kwargs, message in (({"param": "nope", "value": "1"}, "param"),
                                ({"param": "systolic_goal", "value": "135 kg"}, "override"),
                                ({"param": "systolic_goal", "value": "high"}, "value")):
            with pytest.raises(EnrollmentError, match=message):
                set_override(store, rulesets, "p", "hypertension", "htn-weekly-mean-above-goal", now=now,
                             **kwargs)  # type: ignore[arg-type]
        with pytest.raises(EnrollmentError, match="rule"):
            set_override(store, rulesets, "p", "hypertension", "dm-hypoglycemia", disabled=True, now=now)
        plan = set_override(store, rulesets, "p", "hypertension", "htn-crisis", clear=True, now=now)
        assert set(overrides_from_careplans([plan], rulesets, now)[0]) == {"htn-weekly-mean-above-goal"}
