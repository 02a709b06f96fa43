"""bench/chaos.py's comparison: it must see a lost, a duplicated and an extra identifier, or its
"0 lost, 0 duplicated" would mean nothing."""

from __future__ import annotations

import json
from collections import Counter

from bench.chaos import compare, stream


def _run(**ids: Counter[str]) -> dict:
    kinds = ("Observation", "DetectedIssue", "Task", "Flag", "Communication", "outbox")
    return {"ids": {k: ids.get(k, Counter()) for k in kinds}, "rewritten_observations": 0}


def test_compare_counts_lost_duplicated_and_extra() -> None:
    clean = _run(Observation=Counter(["a", "b", "c"]), Communication=Counter(["m1", "m2"]))
    chaos = _run(Observation=Counter({"a": 1, "b": 2}), Communication=Counter(["m1", "m2", "m3"]))
    chaos["rewritten_observations"] = 1
    table = compare(clean, chaos)
    assert table["Observation"] == {"clean": 3, "chaos": 3, "lost": 1, "duplicated": 2, "extra": 0}
    assert table["Communication"] == {"clean": 2, "chaos": 3, "lost": 0, "duplicated": 0, "extra": 1}
    assert compare(clean, clean)["Observation"]["lost"] == 0


def test_the_stream_is_large_enough_and_alerts() -> None:
    messages, alerting = stream(40, 25)
    assert len(messages) >= 2000 and alerting >= 50
    crisis = [m for m in map(json.loads, messages)
              if m["type"] == "blood_pressure" and m["values"]["systolic"] >= 180]
    assert len(crisis) == 20 * 3
