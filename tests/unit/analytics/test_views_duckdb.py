"""RPM views materialized into DuckDB from the exported lake equal the runner over the store's current data."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from analytics.deid.files import transform_for_export
from analytics.export import run_export
from analytics.views import run_view
from analytics.views.duck import query_with_columns, shipped_views
from common.clock import FixedClock
from runtime.cli import main
from tests.unit.analytics.fixtures import observation, seed


def _bp(i: int, sys_v: float, dia_v: float) -> dict:
    return {
        "resourceType": "Observation",
        "id": f"bp-{i}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": "Patient/pat-1"},
        "effectiveDateTime": f"2026-11-1{i}T08:00:00Z",
        "component": [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "valueQuantity": {
                    "value": sys_v,
                    "unit": "mmHg",
                    "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]",
                },
            },
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                "valueQuantity": {
                    "value": dia_v,
                    "unit": "mmHg",
                    "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]",
                },
            },
        ],
    }


def test_views_in_duckdb_match_the_runner_after_updates_and_deletes(tmp_path: Path, data_dir: Path,
                                                                    clock: FixedClock,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    store = seed(data_dir / "fhir.db", clock)
    for i in range(3):
        store.update(_bp(i, 120 + i, 80 + i))
    lake = tmp_path / "lake"
    run_export(data_dir / "fhir.db", lake, clock=clock, grace_s=0)
    clock.advance(timedelta(days=1))
    store.update(observation(5, "pat-2", 101.0))
    store.delete("Observation", "obs-6")
    store.update(_bp(1, 150, 95))
    run_export(data_dir / "fhir.db", lake, clock=clock, grace_s=0)

    db = tmp_path / "views.duckdb"
    assert main(["--data-dir", str(data_dir), "views", "run", str(lake), "--db", str(db)]) == 0
    resources = [store.read("Observation", f"obs-{i}") for i in range(30) if i != 6]
    resources += [store.read("Observation", f"bp-{i}") for i in range(3)]
    for name in ("vital_signs", "blood_pressure", "reading_days"):
        columns, rows = query_with_columns(db, f"SELECT * FROM {name}")
        got = sorted(tuple(r) for r in rows)
        expected = sorted(tuple(row[c] for c in columns) for row in run_view(shipped_views()[name], resources))
        assert got == expected, name
    _, bp = query_with_columns(db, "SELECT systolic, diastolic FROM blood_pressure WHERE id = 'bp-1'")
    assert bp == [(150.0, 95.0)]
    _, n = query_with_columns(db, "SELECT count(*) FROM vital_signs WHERE id = 'obs-6'")
    assert n == [(0,)]

    capsys.readouterr()
    assert main(["--data-dir", str(data_dir), "sql", "SELECT count(*) AS n FROM vital_signs", "--db", str(db),
                 "--csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["n", "29"]


def test_deidentified_lake_applies_deletes_by_version(tmp_path: Path, data_dir: Path, clock: FixedClock) -> None:
    store = seed(data_dir / "fhir.db", clock)
    lake = tmp_path / "lake"
    transform = transform_for_export("research", data_dir / "deid-keys.json")
    run_export(data_dir / "fhir.db", lake, clock=clock, grace_s=0, transform=transform, deidentify="research")
    clock.advance(timedelta(days=1))
    store.delete("Observation", "obs-6")
    store.update(observation(7, "pat-1", 120.0))
    second = run_export(data_dir / "fhir.db", lake, clock=clock, grace_s=0, transform=transform,
                        deidentify="research")
    assert second.resources == {"Observation": 1} and second.deleted == {"Observation": 1}
    db = tmp_path / "views.duckdb"
    assert main(["--data-dir", str(data_dir), "views", "run", str(lake), "vital_signs", "--db", str(db)]) == 0
    _, rows = query_with_columns(db, "SELECT count(*), count(*) FILTER (WHERE value = 120.0) FROM vital_signs")
    assert rows == [(29, 1)]
