"""The operations health figures a pipeline operator watches: each channel's outcomes and failure
rate over 24 hours, and how far the escalation sweep lags behind what is due."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from common.clock import FixedClock
from fhirstore.paging import search_all
from handlers.pipeline_health import channel_outcomes, check_pipeline, escalation_lag_s, health
from notifications.escalation import due_of
from runtime.bootstrap import pipeline_deps
from tests.support.pipeline import DAYTIME, add_patient, make_host, reading


def test_channel_outcomes_and_escalation_lag_follow_the_store(tmp_path: Path) -> None:
    clock = FixedClock(DAYTIME)
    host = make_host(tmp_path / "data", clock=clock)
    host.acquire()
    s = host.services
    try:
        add_patient(s, "p1", programs=("hypertension",))
        s.store.update({"resourceType": "Practitioner", "id": "nurse-1",
                        "telecom": [{"system": "sms", "value": "+15550100901"}]})
        host.publish_device_messages([reading("p1", "blood_pressure", "2026-11-20T14:55:00Z",
                                              {"systolic": 192, "diastolic": 118})])
        assert host.run_until_idle(timeout_s=60)
        comms = search_all(s.store, "Communication", {})
        assert comms
        outcomes = channel_outcomes(pipeline_deps(s))
        assert sum(row["messages"] for row in outcomes.values()) == len(comms)
        for row in outcomes.values():
            decided = row["completed"] + row["not_done"]
            assert row["failure_rate"] == (round(row["not_done"] / decided, 3) if decided else 0.0)
        assert escalation_lag_s(pipeline_deps(s)) == 0.0  # the first level just went out; the next is not due yet

        # The sweep stops running: 40 minutes on, the next level has waited past its due time.
        [task] = [t for t in search_all(s.store, "Task", {}) if t.get("status") == "requested"]
        due = due_of(task)
        assert due is not None
        clock.set(due + timedelta(minutes=25))
        assert escalation_lag_s(pipeline_deps(s)) == 25 * 60.0
        assert health(pipeline_deps(s))["escalation_lag_s"] == 25 * 60.0
        assert any("overdue" in p for p in check_pipeline(pipeline_deps(s)))
        # A day later none of these messages count any more.
        clock.advance(timedelta(days=2))
        assert channel_outcomes(pipeline_deps(s)) == {}
    finally:
        host.release()
        s.close()


def test_the_alert_sweep_timer_sends_the_stalled_pipeline_notice_without_the_console(tmp_path: Path) -> None:
    """Triggers decode and call a handler (DESIGN §3): the timer's stalled-pipeline check is
    handlers.pipeline_health, reached without importing any console module."""
    import subprocess
    import sys

    code = ("import sys, triggers.timers; "
            "print(sorted(m for m in sys.modules if m == 'console' or m.startswith('console.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[3])
    assert out.stdout.strip() == "[]"

    from runtime.bootstrap import install
    from tests.support.pipeline import make_host

    clock = FixedClock(DAYTIME)
    host = make_host(tmp_path / "data", clock=clock)
    s = host.services
    try:
        for i in range(51):  # past MAX_DEAD_LETTERS_24H
            s.dead_letters.add(topic="device-messages", reason="invalid_json", detail="not JSON",
                               payload=f"{{{i}".encode(), source="test")
        install(s)
        host.run_timer("alert_sweep")
        notices = [c for c in search_all(s.store, "Communication", {})
                   if "pipeline needs attention" in c["payload"][0]["contentString"]]
        assert len(notices) == 1 and "51 dead letters in 24 h" in notices[0]["payload"][0]["contentString"]
    finally:
        install(None)
        s.close()
