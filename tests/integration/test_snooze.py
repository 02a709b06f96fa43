"""Directional snooze through the real local pipeline: a snoozed high never hides a low, STAT
alerts page through any snooze, and the rules re-check when the snooze ends."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from handlers import sweeps
from handlers.snooze import rule_directions, snooze
from rules.loader import load_rulesets
from runtime.bootstrap import Services, event_deps
from runtime.host import LocalHost
from runtime.settings import DEFAULT_RULES
from tests.support.pipeline import DAYTIME, add_patient, make_host, reading

P = "Patient/p1"


@pytest.fixture
def host(data_dir: Path) -> LocalHost:
    h = make_host(data_dir, contact_phone="+15550100999")
    add_patient(h.services, "p1", programs=("diabetes",))
    return h


def _glucose(host: LocalHost, value: int, minutes_ago: int) -> None:
    at = (DAYTIME - timedelta(minutes=minutes_ago)).isoformat().replace("+00:00", "Z")
    host.publish_device_messages([reading("p1", "glucose", at, {"glucose": value})])
    assert host.run_until_idle(timeout_s=60)


def recheck_snoozes(services: Services) -> int:
    """The snooze part of the quarter-hour sweep (handlers/quarter_hour_sweep.py), on its own."""
    return sweeps.recheck_snoozes(services.store, services.clock.now(), event_deps(services))


def _episodes(host: LocalHost, rule: str) -> list[dict]:
    return host.services.store.search("DetectedIssue", {"patient": P, "code": f"urn:vigil:rule|{rule}"}).resources


def test_rule_directions_come_from_the_comparisons() -> None:
    rules = {r.id: r for rs in load_rulesets(DEFAULT_RULES) for r in rs.rules}
    assert rule_directions(rules["dm-hypoglycemia"]) == {("glucose", "low")}
    assert rule_directions(rules["dm-check-ketones"]) == {("glucose", "high")}


def test_snoozing_high_silences_highs_but_a_low_still_alerts(host: LocalHost) -> None:
    snooze(host.services.store, P, "glucose", "high", 4, DAYTIME, "Practitioner/n1")
    _glucose(host, 260, 90)
    assert _episodes(host, "dm-check-ketones") == []
    _glucose(host, 62, 60)
    assert len(_episodes(host, "dm-hypoglycemia")) == 1


def test_stat_alerts_page_through_a_snooze(host: LocalHost) -> None:
    snooze(host.services.store, P, "glucose", "low", 4, DAYTIME, "Practitioner/n1")
    _glucose(host, 62, 90)  # level 1 low: silenced
    assert _episodes(host, "dm-hypoglycemia") == []
    _glucose(host, 50, 60)  # level 2 (< 54 mg/dL): priority stat
    assert [e["severity"] for e in _episodes(host, "dm-hypoglycemia")] == ["high"]


def test_the_rules_re_check_when_the_snooze_ends(host: LocalHost) -> None:
    store = host.services.store
    flag = snooze(store, P, "glucose", "high", 2, DAYTIME, "Practitioner/n1")
    _glucose(host, 260, 30)
    assert _episodes(host, "dm-check-ketones") == []
    assert recheck_snoozes(host.services) == 0  # not over yet
    host.services.clock.advance(timedelta(hours=2, minutes=1))  # type: ignore[attr-defined]
    assert recheck_snoozes(host.services) == 1
    assert len(_episodes(host, "dm-check-ketones")) == 1
    assert store.read("Flag", flag["id"])["status"] == "inactive"
    assert recheck_snoozes(host.services) == 0  # once


def test_a_snooze_is_bounded() -> None:
    with pytest.raises(ValueError, match="at most 72"):
        snooze(None, P, "glucose", "high", 100, DAYTIME, "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="direction"):
        snooze(None, P, "glucose", "sideways", 1, DAYTIME, "x")  # type: ignore[arg-type]


def test_ending_an_enrollment_stops_its_alerts_escalation_and_reminders(host: LocalHost) -> None:
    from console.enrollment import end_enrollment
    from handlers.reminders import ReminderDeps, run_reminder_sweep
    from handlers.sweeps import run_escalation_sweep
    from rules.enrollment import careplan_active
    from runtime.bootstrap import messaging

    store = host.services.store
    _glucose(host, 61, 30)
    (issue,) = _episodes(host, "dm-hypoglycemia")
    assert store.read("Task", issue["id"])["status"] == "requested"
    m = messaging(host.services)
    end_enrollment(store, "p1", "diabetes", DAYTIME.date(), rulesets=host.services.rulesets, messaging=m)
    assert store.read("Task", issue["id"])["status"] == "cancelled"
    assert store.read("DetectedIssue", issue["id"])["status"] == "final"
    assert not careplan_active(store.read("CarePlan", "p1-diabetes"), DAYTIME)
    sent = store.search("Communication", {"_summary": "count"}).total
    host.services.clock.advance(timedelta(hours=12))  # type: ignore[attr-defined]
    run_escalation_sweep(m)
    run_reminder_sweep(ReminderDeps(m, host.services.rulesets, host.services.reminders))
    assert store.search("Communication", {"_summary": "count"}).total == sent
