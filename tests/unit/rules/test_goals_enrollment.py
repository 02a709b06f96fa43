"""Personal bounds from Goals, enrollment through CarePlans, overrides and time zones."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from rules.enrollment import (
    OVERRIDE_URL,
    careplan_active,
    enrolled_rulesets,
    override_extension,
    overrides_from_careplans,
    patient_context,
    patient_timezone,
)
from rules.goals import personal_bound
from rules.loader import load_rulesets
from rules.quantity import Quantity
from tests.unit.rules.helpers import goal

NOW = datetime(2025, 3, 10, 12, tzinfo=UTC)
SBP, WEIGHT = "8480-6", "29463-7"


@pytest.mark.parametrize(
    ("goals", "metric", "bound", "expected"),
    [
        ([goal(SBP, high=(135, "mm[Hg]"))], "systolic_bp", "high", (135.0, False)),
        ([goal(SBP, high=(135, "mm[Hg]"))], "systolic_bp", "low", None),  # missing low: any value below is fine
        ([goal(SBP, high=(130, "mm[Hg]"), comparator="<")], "systolic_bp", "high", (130.0, True)),
        ([goal(SBP, high=(130, "mm[Hg]"), comparator="<=")], "systolic_bp", "high", (130.0, False)),
        ([goal(SBP, high=(130, "mm[Hg]"), comparator="<")], "systolic_bp", "low", None),
        ([goal("2708-6", low=(90, "%"), comparator=">=")], "spo2", "low", (90.0, False)),
        ([goal(WEIGHT, high=(176, "[lb_av]"))], "body_weight", "high", (176 * 0.45359237, False)),
        ([goal(SBP, high=(135, "mm[Hg]"), status="on-hold")], "systolic_bp", "high", None),
        ([goal(SBP, high=(135, "mm[Hg]"))], "diastolic_bp", "high", None),
        ([goal(WEIGHT, high=(80, "[stone_av]"))], "body_weight", "high", None),  # unreadable unit: ignored
    ],
)
def test_personal_bound(
    goals: list[dict[str, Any]], metric: str, bound: str, expected: tuple[float, bool] | None
) -> None:
    found = personal_bound(goals, metric, bound)
    if expected is None:
        assert found is None
    else:
        assert found is not None
        assert (round(found.value, 6), found.strict) == (round(expected[0], 6), expected[1])
        assert found.goal_ref == "Goal/g1" and "Goal/" not in found.detail


def test_bare_quantity_without_unit_is_not_guessed() -> None:
    bare = goal(WEIGHT, high=(80, "kg"))
    del bare["target"][0]["detailRange"]["high"]["code"], bare["target"][0]["detailRange"]["high"]["unit"]
    del bare["target"][0]["detailRange"]["high"]["system"]
    assert personal_bound([bare], "body_weight", "high") is None


def test_latest_started_goal_wins() -> None:
    old = goal(SBP, high=(140, "mm[Hg]"), goal_id="old", start="2024-01-01")
    new = goal(SBP, high=(130, "mm[Hg]"), goal_id="new", start="2025-02-01")
    assert personal_bound([new, old], "systolic_bp", "high").value == 130.0  # type: ignore[union-attr]
    assert personal_bound([old, new], "systolic_bp", "high").value == 130.0  # type: ignore[union-attr]


def careplan(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "CarePlan", "id": "cp", "status": "active", "intent": "plan",
            "subject": {"reference": "Patient/p1"}, **extra}


@pytest.mark.parametrize(
    ("plan", "enrolled"),
    [
        (careplan(instantiatesCanonical=["urn:vigil:program:heart-failure"]), {"heart-failure"}),
        (careplan(instantiatesCanonical=["urn:vigil:program:heart-failure|2"]), {"heart-failure"}),
        (careplan(category=[{"coding": [{"system": "urn:vigil:program", "code": "diabetes"}]}]), {"diabetes"}),
        (careplan(category=[{"coding": [{"system": "http://other", "code": "diabetes"}]}]), set()),
        (careplan(status="completed", instantiatesCanonical=["urn:vigil:program:copd"]), set()),
        (careplan(instantiatesCanonical=["urn:vigil:program:copd"], period={"end": "2025-03-01"}), set()),
        (careplan(instantiatesCanonical=["urn:vigil:program:copd"], period={"end": "2025-03-10"}), {"copd"}),
        (careplan(instantiatesCanonical=["urn:vigil:program:copd"], period={"start": "2025-04-01"}), set()),
    ],
)
def test_enrollment_by_active_careplan(plan: dict[str, Any], enrolled: set[str]) -> None:
    rulesets = load_rulesets("rules/library")
    assert {rs.ruleset for rs in enrolled_rulesets([plan], rulesets, NOW)} == enrolled


def test_careplan_period_with_offsets() -> None:
    assert careplan_active(careplan(period={"start": "2025-03-10T11:00:00Z"}), NOW)
    assert not careplan_active(careplan(period={"start": "2025-03-10T13:00:00Z"}), NOW)


def test_overrides_from_careplan_extensions() -> None:
    rulesets = [rs for rs in load_rulesets("rules/library") if rs.ruleset == "heart-failure"]
    plan = careplan(instantiatesCanonical=["urn:vigil:program:heart-failure"], extension=[
        override_extension("hf-weight-gain-day", param="max_gain", value=Quantity(3, "[lb_av]")),
        override_extension("hf-no-weight", disabled=True),
        override_extension("hf-weight-loss", param="max_loss", value=Quantity(1, "[stone_av]")),
        override_extension("no-such-rule", disabled=True),
        {"url": OVERRIDE_URL, "extension": [{"url": "rule", "valueString": "hf-weight-gain-week"}]},
    ])
    overrides, problems = overrides_from_careplans([plan], rulesets, NOW)
    assert overrides["hf-weight-gain-day"].params == {"max_gain": Quantity(3, "[lb_av]")}
    assert overrides["hf-no-weight"].disabled
    assert "hf-weight-loss" not in overrides  # an unusable override is skipped, not half-applied
    assert len(problems) == 3
    assert any("[stone_av]" in p and "hf-weight-loss.max_loss" in p for p in problems)
    assert any("unknown rule 'no-such-rule'" in p for p in problems)
    assert any("hf-weight-gain-week names unknown param None; valid: max_gain" in p for p in problems)


def test_overrides_only_from_careplans_of_the_program() -> None:
    rulesets = [rs for rs in load_rulesets("rules/library") if rs.ruleset == "heart-failure"]
    other = careplan(instantiatesCanonical=["urn:vigil:program:copd"],
                     extension=[override_extension("hf-no-weight", disabled=True)])
    assert overrides_from_careplans([other], rulesets, NOW) == ({}, [])


def test_override_extension_validates_with_fhir_models() -> None:
    from fhir.resources.R4B.careplan import CarePlan

    plan = careplan(instantiatesCanonical=["urn:vigil:program:heart-failure"], extension=[
        override_extension("hf-weight-gain-day", param="max_gain", value=Quantity(3, "[lb_av]")),
        override_extension("hf-no-weight", disabled=True)])
    CarePlan.model_validate(plan)
    with pytest.raises(ValueError, match="either disables"):
        override_extension("x")


def test_patient_timezone_and_context() -> None:
    patient = {"resourceType": "Patient", "id": "p1",
               "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/timezone", "valueCode": "Europe/Madrid"}]}
    assert str(patient_timezone(patient)) == "Europe/Madrid"
    assert str(patient_timezone({"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/timezone",
                                                "valueCode": "Mars/Olympus"}]}, "America/Chicago")) == "America/Chicago"
    rulesets = [rs for rs in load_rulesets("rules/library") if rs.ruleset == "copd"]
    plan = careplan(instantiatesCanonical=["urn:vigil:program:copd"], period={"start": "2025-01-02T00:00:00Z"})
    ctx, problems = patient_context("Patient/p1", now=NOW, rulesets=rulesets, patient=patient, careplans=[plan],
                                    goals=[goal("2708-6", low=(90, "%"))])
    assert problems == [] and str(ctx.tz) == "Europe/Madrid"
    assert ctx.enrolled_since == datetime(2025, 1, 2, tzinfo=UTC) and len(ctx.goals) == 1
