"""The caches a long-running host keeps between messages stay bounded however many messages,
patients or searches go by (docs/operations.md, "Memory"): each test fills one past its bound and
fails if the bound is removed. `bench/memory.py` measures the process as a whole."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import rules
from fhirstore.sqlite import SqliteFhirStore
from fhirstore.sqlite import query as sqlite_query
from fhirstore.version_cache import VersionCache
from handlers import patient_data
from handlers.enrollment_cache import Enrollment, EnrollmentCache
from ingest import identity
from ingest.identity import IdentityResolver
from rules import conditions, evaluate, window
from rules.loader import load_rulesets
from rules.quantity import Quantity


def obs(i: int) -> dict:
    return {"resourceType": "Observation", "id": f"o{i}", "meta": {"versionId": "1"}, "status": "final"}


def test_version_cache_keeps_the_newest_versions_only() -> None:
    cache = VersionCache(max_versions=50)
    for i in range(500):
        cache.remember(obs(i))
    assert cache.get("Observation", "o0", "1") is None  # the oldest went first
    assert [cache.get("Observation", f"o{i}", "1") is not None for i in range(450, 500)] == [True] * 50
    assert sum(cache.get("Observation", f"o{i}", "1") is not None for i in range(500)) == 50


def test_enrollment_cache_keeps_at_most_max_patients(tmp_path: Path) -> None:
    with SqliteFhirStore(tmp_path / "fhir.db") as store:
        cache = EnrollmentCache(max_patients=10)
        loaded: list[str] = []

        def loader(ref: str):  # noqa: ANN202 - the cache's own load callable
            def load() -> Enrollment:
                loaded.append(ref)
                return Enrollment([], None, [], {})
            return load

        for i in range(100):
            cache.get(store, f"Patient/p{i}", loader(f"Patient/p{i}"))
        loaded.clear()
        for i in range(90, 100):  # the newest ten are still held
            cache.get(store, f"Patient/p{i}", loader(f"Patient/p{i}"))
        assert loaded == []
        cache.get(store, "Patient/p0", loader("Patient/p0"))  # the oldest was let go
        assert loaded == ["Patient/p0"]
        assert len(cache._entries) == 10


def test_compiled_searches_per_store_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_query, "_COMPILED_MAX", 20)
    with SqliteFhirStore(tmp_path / "fhir.db") as store:
        store.update({"resourceType": "Patient", "id": "p", "identifier": [{"value": "x"}]})
        # One search per patient and rule is what the alert path runs: distinct criteria each time.
        for i in range(200):
            store.search("Patient", {"identifier": f"v{i}"})
        assert 0 < len(store._searches._compiled) <= 20


def test_identity_lookups_remembered_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(identity, "KNOWN_MAX", 5)
    with SqliteFhirStore(tmp_path / "fhir.db") as store:
        for i in range(30):
            store.update({"resourceType": "Patient", "id": f"p{i}"})
            store.update({"resourceType": "Device", "id": f"d{i}", "identifier": [{"value": f"dev-{i}"}],
                          "patient": {"reference": f"Patient/p{i}"}})
        resolver = IdentityResolver(store)
        for i in range(30):
            assert resolver._lookup(f"dev-{i}", None) == (f"d{i}", f"p{i}")
        assert 0 < len(resolver._known) <= 6


def test_window_start_memo_is_bounded() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(3000):  # a reading's instant never repeats
        window.window_start(at + timedelta(minutes=i), within=None, days=1, tz=UTC)
    info = window._calendar_start.cache_info()
    assert info.maxsize is not None and info.currsize <= info.maxsize <= 4096


def test_rule_indexes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluate, "_INDEXES", {})  # filled here, not left to later tests
    shipped = load_rulesets(Path(rules.__file__).parent / "library")[0]
    for _ in range(200):  # every reload of the rulesets is a new key
        evaluate.rule_index([shipped.model_copy()])
    assert len(evaluate._INDEXES) <= 64


def test_triggered_needs_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(patient_data, "_NEEDS", {})
    for i in range(5000):
        patient_data._triggered_needs([], frozenset({f"metric-{i}"}))
    assert len(patient_data._NEEDS) <= 4097


def test_fixed_thresholds_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conditions, "_FIXED", {})
    for i in range(10_500):
        conditions._fixed(Quantity(40 + i, "/min"), "limit", "heart_rate", False)
    assert len(conditions._FIXED) <= 10_001
