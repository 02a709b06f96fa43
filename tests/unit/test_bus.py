"""The durable local bus: at-least-once, visibility timeout, backoff, dead-letter."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.deadletter import SqliteDeadLetterStore
from runtime.bus import LocalBus


class Now:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def now() -> Now:
    return Now()


@pytest.fixture
def dead(tmp_path: Path) -> SqliteDeadLetterStore:
    return SqliteDeadLetterStore(tmp_path / "dl.db")


@pytest.fixture
def bus(tmp_path: Path, dead: SqliteDeadLetterStore, now: Now) -> LocalBus:
    return LocalBus(tmp_path / "bus.db", dead_letters=dead, max_attempts=3, base_backoff_s=2, now=now)


def test_messages_come_out_in_order_and_ack_removes_them(bus: LocalBus) -> None:
    for i in range(5):
        bus.publish("t", f"m{i}".encode())
    leases = bus.receive("t", max_messages=3)
    assert [x.body for x in leases] == [b"m0", b"m1", b"m2"]
    assert bus.ack(leases) == 3
    assert [x.body for x in bus.receive("t")] == [b"m3", b"m4"]


def test_topics_are_separate(bus: LocalBus) -> None:
    bus.publish("a", b"1")
    bus.publish("b", b"2")
    assert [x.body for x in bus.receive("b")] == [b"2"]
    assert bus.pending("a") == 1


def test_a_pending_message_id_is_enqueued_once(bus: LocalBus) -> None:
    assert bus.publish("t", b"x", msg_id="same") is True
    assert bus.publish("t", b"x", msg_id="same") is False
    assert bus.pending("t") == 1


def test_unacknowledged_message_reappears_after_the_visibility_timeout(bus: LocalBus, now: Now) -> None:
    bus.publish("t", b"x")
    first = bus.receive("t", visibility_timeout_s=30)
    assert bus.receive("t") == []  # leased
    now.t += 31
    again = bus.receive("t")
    assert [x.body for x in again] == [b"x"] and again[0].attempts == 2
    # The first receiver's lease expired: its late ack must not remove the re-leased message.
    assert bus.ack(first) == 0
    assert bus.pending("t") == 1


def test_failure_retries_with_exponential_backoff_then_dead_letters(
    bus: LocalBus, dead: SqliteDeadLetterStore, now: Now
) -> None:
    bus.publish("t", b"poison", properties={"k": "v"})
    lease = bus.receive("t")[0]
    assert bus.fail(lease, "boom 1") == "retry"
    assert bus.receive("t") == []  # backing off 2 s
    now.t += 2.1
    lease = bus.receive("t")[0]
    assert bus.fail(lease, "boom 2") == "retry"
    now.t += 2.1
    assert bus.receive("t") == []  # second backoff is 4 s
    now.t += 2
    lease = bus.receive("t")[0]
    assert lease.attempts == 3
    assert bus.fail(lease, "boom 3") == "dead-lettered"
    assert bus.pending("t") == 0
    [letter] = dead.list()
    assert letter.payload == b"poison" and letter.topic == "t" and letter.reason == "delivery_failed"
    assert "boom 3" in letter.detail and "3 times" in letter.detail


def test_release_all_leases_makes_leased_messages_visible_at_once(bus: LocalBus) -> None:
    bus.publish("t", b"x")
    bus.receive("t", visibility_timeout_s=3600)
    assert bus.receive("t") == []
    assert bus.release_all_leases() == 1
    assert [x.body for x in bus.receive("t")] == [b"x"]


def test_messages_survive_reopening_the_file(tmp_path: Path, dead: SqliteDeadLetterStore) -> None:
    first = LocalBus(tmp_path / "b.db", dead_letters=dead)
    first.publish("t", b"durable")
    first.close()
    second = LocalBus(tmp_path / "b.db", dead_letters=dead)
    assert [x.body for x in second.receive("t")] == [b"durable"]


def test_dead_letters_of_the_same_input_and_reason_are_kept_once(dead: SqliteDeadLetterStore) -> None:
    a = dead.add(topic="t", reason="invalid_json", detail="d", payload=b"{", source="ingest")
    b = dead.add(topic="t", reason="invalid_json", detail="d", payload=b"{", source="ingest")
    assert a == b and dead.count() == 1
    dead.mark_replayed(a)
    c = dead.add(topic="t", reason="invalid_json", detail="d", payload=b"{", source="ingest")
    assert c != a and dead.count() == 1 and dead.count(include_replayed=True) == 2


def test_a_failure_that_says_when_to_retry_waits_at_least_that_long(bus: LocalBus, now: Now) -> None:
    bus.publish("t", b"x")
    lease = bus.receive("t")[0]
    assert bus.fail(lease, "throttled", delay_s=30) == "retry"
    now.t += 29
    assert bus.receive("t") == []
    now.t += 2
    assert len(bus.receive("t")) == 1


def test_trim_drops_only_old_messages_of_the_topic(bus: LocalBus, now: Now) -> None:
    bus.publish("events", b"old")
    bus.publish("work", b"old work")
    now.t += 100
    bus.publish("events", b"new")
    assert bus.trim("events", older_than_s=50) == 1
    assert bus.pending("events") == 1 and bus.pending("work") == 1
