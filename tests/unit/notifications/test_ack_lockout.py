"""The per-number `ACK` failure count and lockout, on a real SQLite FHIR store."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from fhirstore.sqlite import SqliteFhirStore
from notifications.ack_lockout import AckLimits, AckSenderLimit

NURSE = "+15550100201"
OTHER = "+15550100202"


@pytest.fixture
def store(tmp_path: Path, clock):
    s = SqliteFhirStore(tmp_path / "fhir.db", clock=clock)
    yield s
    s.close()


def test_the_limit_locks_out_then_the_lockout_ends(store, clock) -> None:
    limit = AckSenderLimit(store, clock, AckLimits(max_failures=3, window=timedelta(minutes=10),
                                                   lockout=timedelta(minutes=30)))
    assert [limit.record_failure(NURSE, f"m{i}").status for i in range(3)] == ["counted", "counted", "locked"]
    assert limit.state(NURSE).locked(clock.now()) and not limit.state(OTHER).locked(clock.now())
    assert limit.record_failure(NURSE, "m3").status == "already-locked"
    assert limit.record_failure(NURSE, "m2").status == "locked"  # the locking text, re-delivered
    clock.advance(timedelta(minutes=30))
    assert not limit.state(NURSE).locked(clock.now())
    assert limit.record_failure(NURSE, "m4").status == "counted"  # a fresh count after the lockout
    assert limit.state(NURSE).lockouts == 1


def test_two_instances_writing_at_once_both_count(store, clock, tmp_path) -> None:
    """Another instance writes the record between this one's read and write: If-Match refuses the
    stale write, the failure is counted again on the fresh record, and neither failure is lost."""
    other = AckSenderLimit(store, clock, AckLimits(max_failures=4))

    class RacingStore:
        raced = False

        def __getattr__(self, name):
            return getattr(store, name)

        def update(self, resource, **kwargs):
            if not RacingStore.raced and resource["resourceType"] == "Basic":
                RacingStore.raced = True
                other.record_failure(NURSE, "from-the-other-instance")
            return store.update(resource, **kwargs)

    limit = AckSenderLimit(RacingStore(), clock, AckLimits(max_failures=4))
    limit.record_failure(NURSE, "first")  # creates the record (no race on create)
    assert limit.record_failure(NURSE, "second").status == "counted"
    assert sorted(m for m, _ in limit.state(NURSE).failures) == ["first", "from-the-other-instance", "second"]
    assert limit.record_failure(NURSE, "third").status == "locked"


def test_an_accepted_code_clears_the_count(store, clock) -> None:
    limit = AckSenderLimit(store, clock, AckLimits(max_failures=2))
    limit.record_failure(NURSE, "m0")
    limit.clear(NURSE)
    assert limit.record_failure(NURSE, "m1").status == "counted"


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        AckLimits(max_failures=0)
    with pytest.raises(ValueError, match="positive"):
        AckLimits(lockout=timedelta(0))
