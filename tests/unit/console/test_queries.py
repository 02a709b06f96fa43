"""The value against its threshold, as the inbox shows it, from real explanation texts."""

from __future__ import annotations

import pytest

from console.queries import comparison


@pytest.mark.parametrize(("detail", "shown"), [
    ("mean of 14 systolic_bp readings in the 7d up to this reading 144 mm[Hg] >= 130 mm[Hg] (default 130, no usable "
     "active goal for systolic_bp (high bound)).", "144 mm[Hg] ≥ 130 mm[Hg]"),
    ("body_weight first to last reading since the start of the day 1 day(s) earlier (patient's time zone) up to this "
     "reading: 1.72 kg (82.87 kg to 84.59 kg) >= 0.91 kg (rule value 2 [lb_av]).", "1.72 kg ≥ 0.91 kg"),
    ("spo2 87 % < 88 % (default 88, no usable active goal for spo2 (low bound)).", "87 % < 88 %"),
    ("glucose 50 mg/dL < 70 mg/dL (rule value 70 mg/dL). Severity raised to high: glucose 50 mg/dL < 54 mg/dL "
     "(rule value 54 mg/dL).", "50 mg/dL < 70 mg/dL; 50 mg/dL < 54 mg/dL"),
    ("no readings for 3 days", ""),
])
def test_comparison(detail: str, shown: str) -> None:
    assert comparison(detail) == shown


def test_the_inbox_puts_stat_above_all_and_reads_the_priority_an_alert_without_a_task_carries(tmp_path) -> None:
    """docs/console.md: "STAT above all". A rule may route a moderate (or low, Task-less) alert as
    `stat` (docs/rules.md §5); the alert carries its priority on the DetectedIssue
    (urn:vigil:extension:alert-priority) whether or not a Task exists."""
    from console.queries import inbox
    from fhirstore.sqlite import SqliteFhirStore
    from rules.episode_resources import PRIORITY_EXT

    def issue(iid: str, severity: str, priority: str, start: str) -> dict:
        return {"resourceType": "DetectedIssue", "id": iid, "status": "preliminary", "severity": severity,
                "patient": {"reference": "Patient/p1"}, "identifiedPeriod": {"start": start},
                "code": {"coding": [{"system": "urn:vigil:rule", "code": f"rule-{iid}"}]},
                "extension": [{"url": PRIORITY_EXT, "valueCode": priority}]}

    with SqliteFhirStore(tmp_path / "fhir.db") as store:
        store.update({"resourceType": "Patient", "id": "p1"})
        store.update(issue("high-urgent", "high", "urgent", "2026-11-20T08:00:00Z"))
        store.update({"resourceType": "Task", "id": "high-urgent", "status": "requested", "intent": "order",
                      "priority": "urgent"})
        store.update(issue("moderate-stat", "moderate", "stat", "2026-11-20T09:00:00Z"))
        store.update({"resourceType": "Task", "id": "moderate-stat", "status": "requested", "intent": "order",
                      "priority": "stat"})
        store.update(issue("low-stat", "low", "stat", "2026-11-20T10:00:00Z"))  # no Task
        rows = inbox(store, [])
    assert [(r.issue_id, r.priority) for r in rows] == [
        ("moderate-stat", "stat"), ("low-stat", "stat"), ("high-urgent", "urgent")]
    assert all(r.stat for r in rows[:2])
