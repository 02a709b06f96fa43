"""bench/memory.py streams the pipeline bench's workload a chunk at a time: the same patients,
kinds and times as the whole list would have, none in the future."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from bench.memory import slope_per_100k, stream
from bench.pipeline import messages


def test_the_chunked_stream_is_the_whole_workload_in_order() -> None:
    whole = [json.loads(m) for m in messages(24_000, 1_000)]
    chunked = [json.loads(m) for chunk in stream(24_000, 1_000, 4_000) for m in chunk]
    assert [(m["patientId"], m["type"], m["time"]) for m in chunked] == \
        [(m["patientId"], m["type"], m["time"]) for m in whole]
    times = [datetime.fromisoformat(m["time"]) for m in chunked]
    assert times == sorted(times) and times[-1] < datetime.now(UTC)


def test_slope_is_megabytes_per_100k_messages() -> None:
    # 5 MB over 500k messages
    assert slope_per_100k([(500_000, 150.0), (750_000, 152.5), (1_000_000, 155.0)]) == pytest.approx(1.0)
    assert slope_per_100k([(1, 1.0)]) is None
