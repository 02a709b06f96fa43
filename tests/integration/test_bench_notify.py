"""bench/notify.py's persisted escalation sweep: a small run of it, and its fast setup writing the
same Tasks and DetectedIssues as the FHIR-event handler does (so the figures are about real data)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.notify_sweep import T0, bench_persisted_sweep, write_episodes
from common.clock import FixedClock
from fhirstore.paging import search_all
from runtime.bootstrap import Services, bootstrap, messaging
from runtime.settings import Settings


def test_a_small_persisted_sweep_bench_run() -> None:
    f = bench_persisted_sweep(30)
    assert (f.tasks, f.idle_examined) == (30, 0)  # nothing due: no Task read
    assert (f.due_messages, f.due_files) == (30, 30)  # every physician texted once, into the outbox
    assert (f.again_messages, f.again_files) == (0, 0)
    assert f.peak_rss_mb > 0


@pytest.fixture
def two_stores(tmp_path: Path) -> Iterator[tuple[Services, Services]]:
    # One token key for both, so both derive the same acknowledgement codes.
    pair = tuple(
        bootstrap(
            Settings.from_env({}, data_dir=tmp_path / name, ack_token_keys="k1:" + "bench-test-secret-" * 3),
            clock=FixedClock(T0),
        )
        for name in ("direct", "pipeline")
    )
    yield pair  # type: ignore[misc]
    for s in pair:
        s.close()


def _without_meta(s: Services, resource_type: str) -> list[dict[str, Any]]:
    return sorted(({k: v for k, v in r.items() if k != "meta"} for r in search_all(s.store, resource_type, {})),
                  key=lambda r: r["id"])


def test_the_direct_setup_writes_what_the_fhir_event_handler_writes(two_stores: tuple[Services, Services]) -> None:
    direct, pipeline = two_stores
    write_episodes(direct, messaging(direct), 4, "direct")
    write_episodes(pipeline, messaging(pipeline), 4, "pipeline")
    for resource_type in ("Task", "DetectedIssue", "Flag", "Patient", "CareTeam", "Observation"):
        assert _without_meta(direct, resource_type) == _without_meta(pipeline, resource_type), resource_type
    [task, *_] = _without_meta(direct, "Task")
    assert task["businessStatus"]["coding"][0]["code"] == "level-1"
    # Only the messages differ: the handler texted each patient and nurse; the direct setup did not.
    assert len(search_all(pipeline.store, "Communication", {})) == 8
    assert search_all(direct.store, "Communication", {}) == []
    assert dataclasses.asdict(messaging(direct).defaults) == dataclasses.asdict(messaging(pipeline).defaults)
