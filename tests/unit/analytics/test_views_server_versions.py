"""A lake exported from a FHIR server whose version ids are not integers (Medplum's are UUIDs) and whose
delete entries name no version: the views keep each resource's latest version by `meta.lastUpdated`, and a
tombstone removes what it deleted — in `vigil views run` (DuckDB) and in the generated DuckDB and Spark SQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import sqlglot

from analytics.export import run_export
from analytics.export.source import Change
from analytics.views.duck import latest_resources, shipped_views
from analytics.views.sqlgen import generate, lake_schema
from common.clock import FixedClock

T0 = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)
LOINC = "http://loinc.org"


def _micros(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000)


def _stamp(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _obs(oid: str, version: str, at: datetime, value: float) -> Change:
    body = {"resourceType": "Observation", "id": oid, "meta": {"versionId": version, "lastUpdated": _stamp(at)},
            "status": "final", "subject": {"reference": "Patient/p1"},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs"}]}],
            "code": {"coding": [{"system": LOINC, "code": "8867-4"}]}, "effectiveDateTime": _stamp(at),
            "valueQuantity": {"value": value, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}
    # As the remote sources record them: a version id that is not a number counts as 0.
    return Change("Observation", oid, 0, False, _micros(at), _stamp(at), json.dumps(body))


def _gone(oid: str, at: datetime) -> Change:
    return Change("Observation", oid, 0, True, _micros(at), _stamp(at), None)


@dataclass
class _Window:
    upto: int
    picked: list[Change]
    total: int | None = None

    def types(self) -> list[str]:
        return ["Observation"] if self.picked else []

    def changes(self, resource_type: str) -> Iterator[Change]:
        yield from (c for c in self.picked if c.resource_type == resource_type)


@dataclass
class _Server:
    """A server's change log as a paged `_history` would give it: UUID versions, deletes without one."""

    log: list[Change] = field(default_factory=list)
    kind: str = "history"
    methods: dict[str, str] = field(default_factory=lambda: {"Observation": "history"})

    @property
    def deletes_visible(self) -> dict[str, bool]:
        return {"Observation": True}

    def open(self, after: int, upto: int) -> _Window:
        return _Window(upto, [c for c in self.log if after < c.updated <= upto])

    def close(self) -> None:
        pass


def _lake(tmp_path: Path) -> Path:
    server, lake = _Server(), tmp_path / "lake"
    clock = FixedClock(T0 + timedelta(hours=1))
    server.log += [_obs("a", "9f1c-uuid-a1", T0, 70), _obs("b", "0b7e-uuid-b1", T0, 80),
                   _obs("c", "77aa-uuid-c1", T0, 90)]
    run_export(None, lake, source=server, clock=clock, grace_s=0)
    # The second versions' UUIDs sort before the first ones': only the time can tell which is newer.
    later = T0 + timedelta(hours=2)
    server.log += [_obs("a", "0000-uuid-a2", later, 71), _gone("b", later)]
    clock.advance(timedelta(hours=2))
    run_export(None, lake, source=server, clock=clock, grace_s=0)
    return lake


EXPECTED = {("a", 71.0), ("c", 90.0)}  # a's second version; b deleted; c untouched


def test_vigil_views_reads_the_latest_version_and_applies_an_unversioned_delete(tmp_path: Path) -> None:
    lake = _lake(tmp_path)
    rows = list(latest_resources(duckdb.connect(), lake, "Observation"))
    assert {(r["id"], float(r["valueQuantity"]["value"])) for r in rows} == EXPECTED


def _generated_rows(lake: Path, dialect: str) -> set[tuple[str, float]]:
    view = shipped_views()["vital_signs"]
    gen = generate(view, dialect, root=str(lake), schema=lake_schema(lake, "Observation"), tombstones=True)
    con = duckdb.connect()
    if dialect == "spark":
        for kind in ("result", "deleted"):
            con.execute(f"CREATE VIEW vigil_observation_{kind} AS SELECT * FROM read_parquet("
                        f"'{lake}/{kind}/Observation/**/*.parquet', union_by_name = true)")
        cur = con.execute(sqlglot.transpile(gen.select, read="spark", write="duckdb")[0])
    else:
        for statement in gen.statements:
            con.execute(statement)
        cur = con.execute('SELECT * FROM "vital_signs"')
    names = [d[0] for d in cur.description]
    out = set()
    for row in cur.fetchall():
        record = dict(zip(names, row, strict=True))
        out.add((str(record["id"]), float(record["value"])))
    return out


def test_generated_duckdb_and_spark_sql_agree(tmp_path: Path) -> None:
    lake = _lake(tmp_path)
    assert _generated_rows(lake, "duckdb") == EXPECTED
    assert _generated_rows(lake, "spark") == EXPECTED
