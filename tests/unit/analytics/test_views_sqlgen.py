"""The RPM views generated as SQL: the DuckDB form over an exported lake gives the runner's rows exactly, and
the Spark and Synapse forms parse with sqlglot (Synapse: the SELECT inside its OPENROWSET sources)."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlglot

from analytics.export import run_export
from analytics.views import run_view
from analytics.views.duck import shipped_views
from analytics.views.sqlgen import SqlGenError, generate, lake_schema
from common.clock import FixedClock
from fhirstore.sqlite import SqliteFhirStore
from runtime.cli import main
from tests.unit.analytics.fixtures import patient, seed

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def _coding(code: str, system: str = LOINC) -> dict:
    return {"coding": [{"system": system, "code": code}]}


def _component(code: str, value: float) -> dict:
    return {"code": _coding(code), "valueQuantity": {"value": value, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}}


def _bp(i: int, components: list[dict], **extra: Any) -> dict:
    return {"resourceType": "Observation", "id": f"bp-{i}", "status": "final", "code": _coding("85354-9"),
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs"}]}],
            "subject": {"reference": "Patient/pat-1"}, "component": components, **extra}


def _others() -> list[dict]:
    """Resources that reach the corners of the views: periods, odd references, missing parts, many codings."""
    vital = {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}
    return [
        # Time zones as Vigil reads them: the FHIR extension wins over Vigil's own; one patient has only Vigil's.
        {"resourceType": "Patient", "id": "pat-tz-1", "extension": [
            {"url": "urn:vigil:time-zone", "valueCode": "Asia/Tokyo"},
            {"url": "http://hl7.org/fhir/StructureDefinition/timezone", "valueCode": "America/Los_Angeles"}]},
        {"resourceType": "Patient", "id": "pat-tz-2", "extension": [
            {"url": "urn:vigil:time-zone", "valueCode": "Europe/Berlin"}]},
        # MedTech's shape: effectivePeriod, not effectiveDateTime; a versioned absolute reference.
        {"resourceType": "Observation", "id": "med-1", "status": "final", "category": [{"coding": [vital]}],
         "code": {"coding": [{"system": "urn:other", "code": "x"}, {"system": LOINC}, {"system": LOINC,
                                                                                       "code": "59408-5"}]},
         "subject": {"reference": "https://fhir.example.org/r4/Patient/pat-2/_history/3"},
         "effectivePeriod": {"start": "2026-11-18T23:30:00-08:00", "end": "2026-11-18T23:30:00-08:00"},
         "valueQuantity": {"value": 97, "unit": "%", "system": UCUM, "code": "%"}},
        # Not a Patient subject; no value (kept out of vital_signs by its where); no effective at all.
        {"resourceType": "Observation", "id": "med-2", "status": "preliminary", "category": [{"coding": [vital]}],
         "code": _coding("8867-4"), "subject": {"reference": "Group/g-1"}, "valueString": "n/a"},
        # A Period with only a start; a category that is not vital signs.
        {"resourceType": "Observation", "id": "lab-1", "status": "final",
         "category": [{"coding": [{"system": "urn:local", "code": "vital-signs"}]}], "code": _coding("2339-0"),
         "subject": {"reference": "Patient/pat-1"}, "effectivePeriod": {"start": "2026-11-17T00:15:00Z"},
         "valueQuantity": {"value": 5.4, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"}},
        _bp(1, [_component("8480-6", 121.5), _component("8462-4", 79)], effectiveDateTime="2026-11-19T08:00:00Z"),
        # Diastolic missing (forEachOrNull keeps the row), systolic after an unrelated component.
        _bp(2, [_component("8867-4", 70), _component("8480-6", 140)],
            effectivePeriod={"start": "2026-11-19T09:00:00Z"}),
        _bp(3, [], effectiveDateTime="2026-11-19T10:00:00Z"),
        {"resourceType": "DetectedIssue", "id": "ep-1", "status": "final", "severity": "high",
         "code": {"coding": [{"system": "urn:other", "code": "nope"}, {"system": "urn:vigil:rule"},
                             {"system": "urn:vigil:rule", "code": "hr-high"}]},
         "patient": {"reference": "Patient/pat-1"},
         "identifiedPeriod": {"start": "2026-11-18T10:00:00Z", "end": "2026-11-18T12:00:00Z"},
         "mitigation": [{"action": {"text": "acknowledged"}}, {"action": {"coding": [{"code": "x"}]}},
                        {"action": {"text": "resolved: false alarm"}}]},
        {"resourceType": "DetectedIssue", "id": "ep-2", "status": "preliminary", "severity": "moderate",
         "code": {"coding": [{"system": "urn:vigil:rule", "code": "spo2-low"}]},
         "patient": {"reference": "Patient/pat-2"}, "identifiedPeriod": {"start": "2026-11-19T10:00:00Z"}},
        {"resourceType": "Task", "id": "task-1", "status": "completed", "intent": "order", "priority": "urgent",
         "for": {"reference": "Patient/pat-1"}, "focus": {"reference": "DetectedIssue/ep-1"},
         "businessStatus": {"coding": [{"code": "level-2"}]}, "authoredOn": "2026-11-18T10:00:05Z",
         "lastModified": "2026-11-18T10:20:00Z", "owner": {"reference": "Practitioner/nurse-1"}},
        {"resourceType": "Task", "id": "task-2", "status": "requested", "intent": "order",
         "for": {"reference": "Patient/pat-2"}, "focus": {"reference": "Observation/med-1"},
         "authoredOn": "2026-11-19T10:00:05Z"},
        {"resourceType": "Communication", "id": "com-1", "status": "completed",
         "subject": {"reference": "Patient/pat-1"}, "medium": [{"coding": [{"code": "SMSWRIT"}]}],
         "category": [{"coding": [{"code": "alert"}]}], "sent": "2026-11-18T10:00:09Z",
         "about": [{"reference": "DetectedIssue/ep-1"}, {"reference": "Task/task-1"}]},
        {"resourceType": "Communication", "id": "com-2", "status": "entered-in-error",
         "subject": {"reference": "Patient/pat-2"}, "medium": [{"coding": [{"code": "EMAILWRIT"}]}]},
    ]


def _normalized(row: dict, types: dict[str, str | None]) -> tuple:
    # SQL on FHIR leaves most types as text; numbers compare as numbers whatever JSON spelled (72 vs 72.0).
    out = []
    for name, t in types.items():
        v = row[name]
        if v is None:
            out.append(None)
        elif t == "decimal":
            out.append(float(v))
        elif t in ("integer", "positiveInt", "unsignedInt", "integer64"):
            out.append(int(v))
        elif t == "boolean":
            out.append(bool(v))
        else:
            out.append(str(v))
    return tuple(out)


def _column_types(view: dict) -> dict[str, str | None]:
    types: dict[str, str | None] = {}

    def visit(sel: dict) -> None:
        for col in sel.get("column", []):
            types[col["name"]] = col.get("type")
        for sub in sel.get("select", []):
            visit(sub)

    for sel in view["select"]:
        visit(sel)
    return types


@pytest.fixture
def lake(tmp_path: Path, data_dir: Path, clock: FixedClock) -> tuple[Path, SqliteFhirStore, list[tuple[str, str]]]:
    store = seed(data_dir / "fhir.db", clock)
    keys = [("Patient", p["id"]) for p in (patient(i) for i in range(3))]
    keys += [("Observation", f"obs-{i}") for i in range(30)]
    for resource in _others():
        store.update(resource)
        keys.append((resource["resourceType"], resource["id"]))
    out = tmp_path / "lake"
    run_export(data_dir / "fhir.db", out, clock=clock, grace_s=0)
    clock.advance(timedelta(days=1))
    updated = _bp(1, [_component("8480-6", 150), _component("8462-4", 95)], effectiveDateTime="2026-11-20T08:00:00Z")
    store.update(updated)  # a second version in a later folder: the view must show only this one
    store.delete("Observation", "obs-6")
    store.delete("Task", "task-2")
    keys = [k for k in keys if k not in (("Observation", "obs-6"), ("Task", "task-2"))]
    run_export(data_dir / "fhir.db", out, clock=clock, grace_s=0)
    return out, store, keys


@pytest.mark.parametrize("name", sorted(shipped_views()))
def test_duckdb_sql_gives_the_runners_rows(lake: tuple[Path, SqliteFhirStore, list[tuple[str, str]]],
                                           name: str) -> None:
    root, store, keys = lake
    view = shipped_views()[name]
    resources = [store.read(t, i) for t, i in keys if t == view["resource"]]
    types = _column_types(view)
    expected = Counter(_normalized(row, types) for row in run_view(view, resources))
    assert expected, f"{name}: the fixture gives the view no rows, so the comparison would prove nothing"

    has_deletes = (root / "deleted" / view["resource"]).exists()
    generated = generate(view, "duckdb", root=str(root), schema=lake_schema(root, view["resource"]),
                         tombstones=has_deletes)
    con = duckdb.connect()
    for statement in generated.statements:
        con.execute(statement)
    cur = con.execute(f'SELECT * FROM "{name}"')
    assert [d[0] for d in cur.description] == list(types)
    got = Counter(_normalized(dict(zip(types, row, strict=True)), types) for row in cur.fetchall())
    assert got == expected


def test_duckdb_sql_drops_deleted_and_superseded_versions(
        lake: tuple[Path, SqliteFhirStore, list[tuple[str, str]]]) -> None:
    root, _, _ = lake
    views = shipped_views()
    con = duckdb.connect()
    for name in ("vital_signs", "blood_pressure", "tasks"):
        view = views[name]
        generated = generate(view, "duckdb", root=str(root), schema=lake_schema(root, view["resource"]))
        for statement in generated.statements:
            con.execute(statement)
    assert con.execute("SELECT systolic, diastolic FROM blood_pressure WHERE id = 'bp-1'").fetchall() == [(150.0, 95.0)]
    assert con.execute("SELECT count(*) FROM vital_signs WHERE id = 'obs-6'").fetchall() == [(0,)]
    assert con.execute("SELECT id FROM tasks").fetchall() == [("task-1",)]
    # the same lake without the tombstones shows what the deletes removed: the check above is not vacuous
    plain = generate(views["tasks"], "duckdb", root=str(root), schema=lake_schema(root, "Task"), tombstones=False)
    rows = sorted(con.execute(plain.select).fetchall())
    assert [r[0] for r in rows] == ["task-1", "task-2"]


def _all(dialect: str) -> list[Any]:
    return [generate(v, dialect, root="abfss://lake@vigilacct.dfs.core.windows.net/export")
            for v in shipped_views().values()]


@pytest.mark.parametrize("generated", _all("spark"), ids=lambda g: g.name)
def test_spark_views_parse(generated: Any) -> None:
    for statement in generated.statements:
        parsed = sqlglot.parse_one(statement, read="spark")
        assert parsed is not None
    view = sqlglot.parse_one(generated.statements[-1], read="spark")
    assert isinstance(view, sqlglot.exp.Create) and view.args["kind"] == "VIEW"
    assert not re.search(r'"|\blist_|\blambda\b|array_length', generated.select, re.I), "DuckDB spelling left"


def test_spark_sql_means_the_same_rows(lake: tuple[Path, SqliteFhirStore, list[tuple[str, str]]]) -> None:
    # sqlglot reads the Spark SQL back into DuckDB and runs it on the lake: a spelling that lost its meaning
    # in translation (an index off by one, a dropped filter) changes the rows.
    root, store, keys = lake
    for name, view in shipped_views().items():
        rtype = view["resource"]
        gen = generate(view, "spark", root=str(root), schema=lake_schema(root, rtype),
                       tombstones=(root / "deleted" / rtype).exists())
        con = duckdb.connect()
        for kind in ("result", "deleted"):
            if (root / kind / rtype).exists():
                con.execute(f"CREATE VIEW vigil_{rtype.lower()}_{kind} AS SELECT * FROM read_parquet("
                            f"'{root}/{kind}/{rtype}/**/*.parquet', union_by_name = true)")
        back = sqlglot.transpile(gen.select, read="spark", write="duckdb")[0]
        types = _column_types(view)
        got = Counter(_normalized(dict(zip(types, row, strict=True)), types) for row in con.execute(back).fetchall())
        resources = [store.read(t, i) for t, i in keys if t == rtype]
        assert got == Counter(_normalized(row, types) for row in run_view(view, resources)), name


@pytest.mark.parametrize("generated", _all("synapse"), ids=lambda g: g.name)
def test_synapse_views_parse_inside_openrowset(generated: Any) -> None:
    parsed = sqlglot.parse_one(generated.parseable_select, read="tsql")
    assert isinstance(parsed, sqlglot.exp.Select)
    # the text that is shipped is exactly the parsed SELECT with the OPENROWSET sources put in
    text = generated.parseable_select
    for token, rowset in generated.rowsets.items():
        assert token in text
        assert re.fullmatch(r"OPENROWSET\(BULK '[^']+/(result|deleted)/\w+/\*/\*/\*/\*/\*\.parquet', "
                            r"FORMAT = 'PARQUET'\) WITH \((\[\w+\] [A-Z]+\([0-9A-Z]+\)( COLLATE \w+)?|\[\w+\] "
                            r"(FLOAT|BIT))(, (\[\w+\] [A-Z]+\([0-9A-Z]+\)( COLLATE \w+)?|\[\w+\] (FLOAT|BIT)))*\)",
                            rowset), rowset
        text = text.replace(token, rowset)
    assert generated.statements == [f"CREATE OR ALTER VIEW [{generated.name}] AS\n{text}"]
    # every root element the SELECT reads is declared in the WITH clause
    declared = set(re.findall(r"\[(\w+)\] (?:VARCHAR|FLOAT|BIT)", generated.rowsets["[__rowset_result]"]))
    used = set(re.findall(r"\[r\]\.\[(\w+)\]", generated.parseable_select))
    assert used <= declared


def test_untranslated_features_are_refused_with_the_place() -> None:
    base = {"resourceType": "ViewDefinition", "name": "v", "resource": "Patient"}
    cases = [
        ({"select": [{"column": [{"name": "n", "path": "name.family"}]}]}, r"select\[0\]\.column\[0\]\.path: "
         r"'name\.family': the path can give many values"),
        ({"select": [{"unionAll": [{"column": [{"name": "a", "path": "id"}]},
                                   {"column": [{"name": "a", "path": "id"}]}]}]}, r"select\[0\]\.unionAll"),
        ({"select": [{"column": [{"name": "b", "path": "birthDate = @2000-01-01"}]}]}, r"column\[0\]\.path"),
        ({"select": [{"column": [{"name": "c", "path": "name.first().family.length()"}]}]},
         r"the function length\(\) is not translated"),
        ({"select": [{"column": [{"name": "d", "path": "deceased"}]}]}, r"choice element 'deceased' needs ofType"),
        ({"select": [{"column": [{"name": "e", "path": "nonsense"}]}]}, r"Patient has no element 'nonsense'"),
        ({"select": [{"forEach": "name", "column": [{"name": "i", "path": "%rowIndex"}]}]}, r"%rowIndex"),
    ]
    for body, message in cases:
        with pytest.raises(SqlGenError, match=message):
            generate({**base, **body}, "duckdb", root="/lake")
    with pytest.raises(SqlGenError, match="collection columns are not translated for Synapse"):
        generate({**base, "select": [{"column": [{"name": "f", "path": "name.family", "collection": True}]}]},
                 "synapse", root="/lake")
    with pytest.raises(SqlGenError, match="unknown dialect 'oracle'"):
        generate({**base, "select": [{"column": [{"name": "g", "path": "id"}]}]}, "oracle", root="/lake")


def test_cli_prints_sql_that_duckdb_runs(lake: tuple[Path, SqliteFhirStore, list[tuple[str, str]]], data_dir: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    root, store, keys = lake
    capsys.readouterr()
    assert main(["--data-dir", str(data_dir), "views", "sql", "--dialect", "duckdb", "--lake", str(root)]) == 0
    script = capsys.readouterr().out
    con = duckdb.connect()
    con.execute(script)
    for name, view in shipped_views().items():
        resources = [store.read(t, i) for t, i in keys if t == view["resource"]]
        assert con.execute(f'SELECT count(*) FROM "{name}"').fetchall() == [(len(run_view(view, resources)),)]

    assert main(["--data-dir", str(data_dir), "views", "sql", "tasks", "--dialect", "spark",
                 "--root", "abfss://lake@acct.dfs.core.windows.net/export"]) == 0
    spark = capsys.readouterr().out
    assert len(sqlglot.parse(spark, read="spark")) == 3  # the two sources and the view
    assert "path 'abfss://lake@acct.dfs.core.windows.net/export/result/Task/*/*/*/*/*.parquet'" in spark

    assert main(["--data-dir", str(data_dir), "views", "sql", "vital_signs", "--dialect", "synapse",
                 "--root", "export", "--data-source", "vigil_lake"]) == 0
    synapse = capsys.readouterr().out
    assert "OPENROWSET(BULK 'export/result/Observation/*/*/*/*/*.parquet', DATA_SOURCE = 'vigil_lake', " \
           "FORMAT = 'PARQUET')" in synapse

    assert main(["--data-dir", str(data_dir), "views", "sql", "nope", "--dialect", "spark", "--root", "x"]) == 1
    assert "no view named nope" in capsys.readouterr().err
    assert main(["--data-dir", str(data_dir), "views", "sql", "--dialect", "spark"]) == 2
    assert "--lake DIR" in capsys.readouterr().err


# Views with extensions, unions of three and a boolean column: the generator is generic over ViewDefinitions,
# not written for the six shipped ones.
_TIME_ZONES = {
    "resourceType": "ViewDefinition", "name": "patient_time_zones", "resource": "Patient",
    "select": [{"column": [
        {"name": "id", "path": "getResourceKey()", "type": "id"},
        {"name": "time_zone", "type": "code", "path":
         "(extension.where(url = 'http://hl7.org/fhir/StructureDefinition/timezone').value.ofType(code)"
         " | extension.where(url = 'http://hl7.org/fhir/StructureDefinition/tz-code').value.ofType(code)"
         " | extension.where(url = 'urn:vigil:time-zone').value.ofType(code)).first()"},
        {"name": "active", "path": "active", "type": "boolean"},
        {"name": "families", "path": "name.family", "collection": True},
    ]}, {"forEach": "telecom.where(system = 'phone')", "column": [{"name": "use", "path": "use"}]}],
}
_DEVICE_DAYS = {
    "resourceType": "ViewDefinition", "name": "device_days", "resource": "Observation",
    "where": [{"path": "status != 'preliminary'"}],
    "select": [{"column": [
        {"name": "id", "path": "getResourceKey()", "type": "id"},
        {"name": "day", "type": "string",
         "path": "(effective.ofType(dateTime) | effective.ofType(Period).start).first().toString().substring(0, 10)"},
        {"name": "device", "path": "device.exists()", "type": "boolean"},
        {"name": "coded", "path": "code.coding.where(code.exists()).exists() and code.text.exists().not()",
         "type": "boolean"},
    ]}, {"forEachOrNull": "category", "column": [{"name": "category", "path": "coding.code.first()"}]}],
}


def test_other_views_translate_to_the_same_rows(tmp_path: Path, data_dir: Path, clock: FixedClock) -> None:
    store = seed(data_dir / "fhir.db", clock)
    zones = ["http://hl7.org/fhir/StructureDefinition/tz-code", "urn:vigil:time-zone"]
    for i, url in enumerate(zones, start=1):
        patient = store.read("Patient", f"pat-{i}")
        patient["extension"] = [{"url": "urn:other", "valueString": "x"}, {"url": url, "valueCode": "America/Denver"}]
        patient["active"] = i == 1
        patient["telecom"] = [{"system": "phone", "value": "555-0100", "use": "home"},
                              {"system": "phone", "value": "555-0101"}, {"system": "email", "value": "a@b.c"}]
        store.update(patient)
    for resource in _others():
        store.update(resource)
    root = tmp_path / "lake"
    run_export(data_dir / "fhir.db", root, clock=clock, grace_s=0)
    for view in (_TIME_ZONES, _DEVICE_DAYS):
        rtype = view["resource"]
        resources = [r for r in (json.loads(line) for f in sorted((root / "result" / rtype).rglob("*.ndjson"))
                                 for line in f.read_text().splitlines())]
        types = _column_types(view)
        expected = Counter(_normalized(row, types) for row in run_view(view, resources))
        con = duckdb.connect()
        for statement in generate(view, "duckdb", root=str(root), schema=lake_schema(root, rtype),
                                  tombstones=False).statements:
            con.execute(statement)
        got = Counter(_normalized(dict(zip(types, row, strict=True)), types)
                      for row in con.execute(f'SELECT * FROM "{view["name"]}"').fetchall())
        assert got == expected, view["name"]
        for dialect in ("spark", "synapse"):
            if dialect == "synapse" and view is _TIME_ZONES:
                continue  # a collection column: refused for T-SQL (tested above)
            generated = generate(view, dialect, root="/lake")
            sqlglot.parse_one(generated.parseable_select, read="tsql" if dialect == "synapse" else "spark")


def test_elements_the_lake_never_had_are_empty_with_its_schema(tmp_path: Path, data_dir: Path,
                                                               clock: FixedClock) -> None:
    # seed() writes effectiveDateTime only: the lake has no effectivePeriod or bodySite column at all.
    store = seed(data_dir / "fhir.db", clock)
    root = tmp_path / "lake"
    run_export(data_dir / "fhir.db", root, clock=clock, grace_s=0)
    schema = lake_schema(root, "Observation")
    assert schema is not None and "effectivePeriod" not in schema.names and "bodySite" not in schema.names
    view = {**shipped_views()["vital_signs"], "name": "v",
            "where": [{"path": "bodySite.text = 'arm' or status = 'final'"},
                      {"path": "(bodySite.text = 'arm' and status = 'final').not().exists().not()"}]}
    with pytest.raises(duckdb.BinderException, match="does not have a column named"):
        duckdb.connect().execute(generate(view, "duckdb", root=str(root), tombstones=False).select)
    generated = generate(view, "duckdb", root=str(root), schema=schema, tombstones=False)
    types = _column_types(view)
    got = Counter(_normalized(dict(zip(types, row, strict=True)), types)
                  for row in duckdb.connect().execute(generated.select).fetchall())
    resources = [store.read("Observation", f"obs-{i}") for i in range(30)]
    expected = Counter(_normalized(row, types) for row in run_view(view, resources))
    # empty or true is true; (empty and true) is empty, its not() empty, exists() false, not() true
    assert got == expected and sum(expected.values()) == 30
    view["where"] = [{"path": "(bodySite.text = 'arm' and status = 'final').not()"}]
    generated = generate(view, "duckdb", root=str(root), schema=schema, tombstones=False)
    assert duckdb.connect().execute(generated.select).fetchall() == run_view(view, resources) == []
