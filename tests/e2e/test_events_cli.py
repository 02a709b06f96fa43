"""`vigil events tail`: the workflow events Vigil published to the local bus, as JSON lines."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from notifications import workflow_events as wf
from runtime.bootstrap import WORKFLOW_EVENTS, bootstrap
from runtime.cli import main
from runtime.settings import Settings
from tests.support.pipeline import add_patient, make_host, reading

ROOT = Path(__file__).resolve().parents[2]
AT = datetime(2026, 11, 20, 12, 30, tzinfo=UTC)
IDS = {"detected_issue": "DetectedIssue/di1", "patient": "Patient/p1"}


def lifecycle() -> list[wf.WorkflowEvent]:
    return [
        wf.episode_opened(**IDS, task="Task/t1", rule_id="htn-crisis", severity="high", at=AT),
        wf.escalated(**IDS, task="Task/t1", level=2, roles=["physician"], at=AT),
        wf.message_failed(communication="Communication/c1", patient="Patient/p1", channel="sms",
                          reason_code="opted-out", at=AT),
        wf.acknowledged(**IDS, task="Task/t1", by="Practitioner/n1", level=2, at=AT),
    ]


def publish(data_dir: Path, events: list[wf.WorkflowEvent]) -> None:
    services = bootstrap(Settings.from_env({}, data_dir=data_dir))
    try:
        services.workflow.publish(events)
    finally:
        services.close()


def tail(data_dir: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict], str]:
    code = main(["--data-dir", str(data_dir), "events", "tail", *args])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def test_tail_prints_published_events_in_order_without_consuming_them(data_dir: Path, capsys) -> None:
    events = lifecycle()
    publish(data_dir, events)
    code, shown, _ = tail(data_dir, capsys)
    assert code == 0
    assert shown == [e.as_event_grid() for e in events]  # exactly what an Event Grid subscriber gets
    assert shown[1]["eventType"] == "Vigil.Alert.Escalated" and shown[1]["data"]["level"] == 2

    # Reading consumed nothing: the same events again, still on the bus.
    assert tail(data_dir, capsys)[1] == shown
    services = bootstrap(Settings.from_env({}, data_dir=data_dir))
    try:
        assert services.bus.pending(WORKFLOW_EVENTS) == 4
    finally:
        services.close()


def test_type_filter_and_limit(data_dir: Path, capsys) -> None:
    publish(data_dir, lifecycle())
    code, shown, _ = tail(data_dir, capsys, "--type", "Vigil.Message.Failed")
    assert code == 0 and [e["eventType"] for e in shown] == ["Vigil.Message.Failed"]
    _, shown, _ = tail(data_dir, capsys, "--type", "escalated", "--type", "acknowledged")
    assert [e["eventType"] for e in shown] == ["Vigil.Alert.Escalated", "Vigil.Alert.Acknowledged"]
    _, shown, _ = tail(data_dir, capsys, "--limit", "2")
    assert [e["eventType"] for e in shown] == ["Vigil.Message.Failed", "Vigil.Alert.Acknowledged"]
    _, shown, _ = tail(data_dir, capsys, "-n", "0")
    assert len(shown) == 4


def test_an_unknown_type_is_refused_with_the_known_ones(data_dir: Path, capsys) -> None:
    publish(data_dir, lifecycle())
    code, shown, err = tail(data_dir, capsys, "--type", "paged")
    assert code == 2 and shown == []
    assert "'paged' is not a workflow event type" in err and "Vigil.Alert.EpisodeOpened" in err


def test_no_bus_yet_prints_nothing_and_says_so(tmp_path: Path, capsys) -> None:
    code, shown, err = tail(tmp_path / "empty", capsys)
    assert (code, shown) == (0, []) and "no workflow events yet" in err


def test_events_from_the_pipeline_show_up(data_dir: Path, capsys) -> None:
    host = make_host(data_dir)
    host.acquire()
    try:
        add_patient(host.services, "p1")
        host.publish_device_messages([
            reading("p1", "blood_pressure", "2026-11-20T07:30:00-05:00", {"systolic": 186, "diastolic": 112})])
        assert host.run_until_idle(timeout_s=60)
    finally:
        host.release()
        host.services.close()
    _, shown, _ = tail(data_dir, capsys, "--type", "episode_opened")
    [opened] = shown
    assert opened["subject"].startswith("DetectedIssue/") and opened["data"]["patient"] == "Patient/p1"
    assert opened["data"]["ruleId"] == "htn-crisis"


def _lines(stream, out: queue.Queue[str]) -> None:
    for line in stream:
        out.put(line)


def _next_line(lines: queue.Queue[str], timeout_s: float = 20.0) -> dict:
    return json.loads(lines.get(timeout=timeout_s))


def test_follow_prints_new_events_as_they_are_published(data_dir: Path) -> None:
    first, *later = lifecycle()
    publish(data_dir, [first])
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from runtime.cli import main; sys.exit(main(sys.argv[1:]))",
         "--data-dir", str(data_dir), "events", "tail", "--follow", "--type", "Vigil.Alert.EpisodeOpened",
         "--type", "Vigil.Alert.Acknowledged"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    try:
        assert _next_line(lines)["id"] == first.id
        time.sleep(0.2)
        publish(data_dir, later)
        # Escalated and Message.Failed are filtered out; the acknowledgement arrives.
        assert _next_line(lines)["id"] == later[-1].id
        assert proc.poll() is None  # still following
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert lines.empty()
