"""Retention: `vigil purge` and the daily `retention_purge` timer remove health data older than the
per-store retention, never pending work, and leave no copy of it in the SQLite files."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.bootstrap import WORKFLOW_EVENTS, Services, bootstrap
from runtime.cli import main
from runtime.host import LocalHost
from runtime.retention import apply_retention
from runtime.settings import Settings

DAY = 86400.0
OLD = time.time() - 40 * DAY  # older than the default 30 days (dead letters, outbox) and 7 (bus)
MARK = b"PATIENT-READING-7f3a9c"  # stands for the health data in a payload


@pytest.fixture
def services(data_dir: Path) -> Iterator[Services]:
    s = bootstrap(Settings.from_env({}, data_dir=data_dir))
    yield s
    s.close()


def _age_dead_letter(data_dir: Path, letter_id: int, created_at: float) -> None:
    conn = sqlite3.connect(data_dir / "deadletters.db")
    with conn:
        conn.execute("UPDATE dead_letters SET created_at = ? WHERE id = ?", (created_at, letter_id))
    conn.close()


def _dead_letters(services: Services) -> tuple[int, int, int]:
    dl = services.dead_letters
    old_replayed = dl.add(topic="eh:device-messages", reason="invalid_json", detail="line 1: not JSON",
                          payload=MARK + b"-1", source="ingest")
    dl.mark_replayed(old_replayed)
    old_open = dl.add(topic="eh:device-messages", reason="unknown_device", detail="deviceId: not registered",
                      payload=MARK + b"-2", source="ingest", properties={"partition_key": "dev-1"})
    recent = dl.add(topic="eh:device-messages", reason="unknown_device", detail="deviceId: not registered",
                    payload=MARK + b"-3", source="ingest")
    for i in (old_replayed, old_open):
        _age_dead_letter(services.settings.data_dir, i, OLD)
    return old_replayed, old_open, recent


def _file_bytes(data_dir: Path, name: str) -> bytes:
    return b"".join(p.read_bytes() for p in data_dir.glob(name + "*"))


def test_dead_letters_replayed_go_never_replayed_keep_their_record_without_payload(services: Services) -> None:
    old_replayed, old_open, recent = _dead_letters(services)
    report = apply_retention(services)
    assert report.dead_letters == {"retention_days": 30.0, "deleted": 1, "payloads_erased": 1}
    dl = services.dead_letters
    assert dl.get(old_replayed) is None
    erased = dl.get(old_open)
    assert erased is not None and erased.payload == b"" and erased.properties == {}
    assert erased.purged_at is not None
    assert (erased.reason, erased.detail) == ("unknown_device", "deviceId: not registered")  # the record stays
    assert dl.get(recent).payload == MARK + b"-3"
    assert dl.count() == 2  # both failures nobody acted on are still listed
    # The erased bytes are gone from the file and its write-ahead log, not just unlinked from a row.
    data = _file_bytes(services.settings.data_dir, "deadletters.db")
    assert MARK + b"-1" not in data and MARK + b"-2" not in data and MARK + b"-3" in data
    # A second run finds nothing more; the same input failing again is recorded afresh, payload and all.
    assert apply_retention(services).dead_letters["payloads_erased"] == 0
    again = dl.add(topic="eh:device-messages", reason="unknown_device", detail="deviceId: not registered",
                   payload=MARK + b"-2", source="ingest")
    assert again != old_open and dl.get(again).payload == MARK + b"-2"


def test_the_bus_keeps_every_pending_message_whatever_its_age(services: Services) -> None:
    bus = services.bus
    assert bus is not None
    bus.publish(WORKFLOW_EVENTS, b'{"type": "old"}' + MARK, msg_id="old-event")
    bus.publish(WORKFLOW_EVENTS, b'{"type": "new"}', msg_id="new-event")
    bus.publish("eh:device-messages", b'{"deviceId": "d"}' + MARK, msg_id="old-undelivered")
    conn = sqlite3.connect(services.settings.data_dir / "bus.db")
    with conn:
        conn.execute("UPDATE messages SET enqueued_at = ? WHERE msg_id IN ('old-event', 'old-undelivered')", (OLD,))
    conn.close()
    report = apply_retention(services)
    assert report.bus == {"retention_days": 7.0, "deleted": 1, "pending_kept": 1}
    assert bus.topics() == {WORKFLOW_EVENTS: 1, "eh:device-messages": 1}
    leases = bus.receive("eh:device-messages")
    assert [x.msg_id for x in leases] == ["old-undelivered"]  # still delivered


def _outbox_file(directory: Path, name: str, mtime: float) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(json.dumps({"message_id": name, "body": "Acknowledge: https://example.test/ack?t=x"}))
    os.utime(path, (mtime, mtime))
    return path


def test_outbox_files_older_than_the_retention_and_abandoned_temp_files_go(services: Services) -> None:
    outbox = services.settings.data_dir / "outbox"
    old = _outbox_file(outbox, "m-old.json", OLD)
    new = _outbox_file(outbox, "m-new.json", time.time())
    stale_tmp = _outbox_file(outbox, ".m-x.123.456.tmp", time.time() - 2 * 3600)
    live_tmp = _outbox_file(outbox, ".m-y.123.456.tmp", time.time())
    report = apply_retention(services)
    assert report.outbox == {"retention_days": 30.0, "deleted": 1, "abandoned_tmp_deleted": 1, "kept": 1}
    assert not old.exists() and not stale_tmp.exists()
    assert new.exists() and live_tmp.exists()  # a send in progress keeps its temp file


def test_dry_run_counts_and_removes_nothing(services: Services, capsys: pytest.CaptureFixture[str]) -> None:
    _dead_letters(services)
    old = _outbox_file(services.settings.data_dir / "outbox", "m-old.json", OLD)
    data_dir = services.settings.data_dir
    assert main(["--data-dir", str(data_dir), "purge", "--dry-run", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dry_run"] is True
    assert (report["dead_letters"]["deleted"], report["dead_letters"]["payloads_erased"]) == (1, 1)
    assert report["outbox"]["deleted"] == 1
    assert old.exists() and services.dead_letters.count(include_replayed=True) == 3
    assert main(["--data-dir", str(data_dir), "purge"]) == 0
    text = capsys.readouterr().out
    assert "removed: 1 replayed ones; the payloads of 1 never replayed" in text
    assert not old.exists() and services.dead_letters.count(include_replayed=True) == 2


def test_retention_zero_keeps_a_store_forever(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_RETENTION_OUTBOX_DAYS", "0")
    monkeypatch.setenv("VIGIL_RETENTION_DEAD_LETTER_DAYS", "0")
    services = bootstrap(Settings.from_env(data_dir=data_dir))
    try:
        _dead_letters(services)
        old = _outbox_file(data_dir / "outbox", "m-old.json", OLD)
        report = apply_retention(services)
        assert report.outbox == {"kept_forever": True} and report.dead_letters == {"kept_forever": True}
        assert old.exists() and services.dead_letters.count(include_replayed=True) == 3
    finally:
        services.close()


def test_a_negative_retention_is_a_settings_error() -> None:
    from runtime.settings import SettingsError

    with pytest.raises(SettingsError, match="VIGIL_RETENTION_BUS_DAYS"):
        Settings.from_env({"VIGIL_RETENTION_BUS_DAYS": "-1"})


def test_the_daily_timer_applies_the_retention(services: Services) -> None:
    old = _outbox_file(services.settings.data_dir / "outbox", "m-old.json", OLD)
    _, old_open, _ = _dead_letters(services)
    LocalHost(services).run_timer("retention_purge")
    assert not old.exists()
    assert services.dead_letters.get(old_open).purged_at is not None


def test_replay_skips_a_dead_letter_whose_payload_was_erased(services: Services,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    _, old_open, recent = _dead_letters(services)
    apply_retention(services)
    data_dir = services.settings.data_dir
    assert main(["--data-dir", str(data_dir), "dead-letters", "list"]) == 0
    listing = capsys.readouterr().out
    assert "(payload purged)" in listing
    assert (
        main(["--data-dir", str(data_dir), "dead-letters", "replay", str(old_open), str(recent)]) == 3
    )  # the recent one fails again
    out = capsys.readouterr().out
    assert "skipping 1 dead letters whose payload retention erased" in out and "replaying 1 dead letters" in out
