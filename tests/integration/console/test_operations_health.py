"""The operations health figures a pipeline operator watches: each channel's outcomes and failure
rate over 24 hours, and how far the escalation sweep lags behind what is due."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from common.clock import FixedClock
from console.operations import channel_outcomes, check_thresholds, escalation_lag_s, health
from fhirstore.paging import search_all
from notifications.escalation import due_of
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
        outcomes = channel_outcomes(s)
        assert sum(row["messages"] for row in outcomes.values()) == len(comms)
        for row in outcomes.values():
            decided = row["completed"] + row["not_done"]
            assert row["failure_rate"] == (round(row["not_done"] / decided, 3) if decided else 0.0)
        assert escalation_lag_s(s) == 0.0  # the first level just went out; the next is not due yet

        # The sweep stops running: 40 minutes on, the next level has waited past its due time.
        [task] = [t for t in search_all(s.store, "Task", {}) if t.get("status") == "requested"]
        due = due_of(task)
        assert due is not None
        clock.set(due + timedelta(minutes=25))
        assert escalation_lag_s(s) == 25 * 60.0
        assert health(s)["escalation_lag_s"] == 25 * 60.0
        assert any("overdue" in p for p in check_thresholds(s))
        # A day later none of these messages count any more.
        clock.advance(timedelta(days=2))
        assert channel_outcomes(s) == {}
    finally:
        host.release()
        s.close()
