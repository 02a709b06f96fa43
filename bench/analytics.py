"""Benchmark of the analytics leg. Prints figures; not a test.

    .venv/bin/python bench/analytics.py [--observations 1000000] [--json]

* ``export_resources_per_s``: `vigil export` of N Observations from the embedded store to Parquet only
  (rows are written into the store's tables directly, as its writes would leave them, to seed N quickly).
* ``floor_duckdb_ndjson_to_parquet_per_s``: DuckDB reading the same resources as NDJSON into one Parquet
  file, in the same run: what a C++ engine does with no per-resource Python.
* ``deidentify_resources_per_s``: the research profile over a sample of the same Observations.
* ``view_build_s`` / ``view_query_ms``: the vital-signs view materialized into DuckDB from the exported
  Parquet, and a per-patient daily-mean query over it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analytics.deid import Anonymizer, load_config  # noqa: E402
from analytics.export import run_export  # noqa: E402
from fhirstore.sqlite import SqliteFhirStore  # noqa: E402

START = datetime(2026, 1, 1, tzinfo=UTC)
LOINC = [("8867-4", "Heart rate", "/min"), ("59408-5", "Oxygen saturation", "%"), ("29463-7", "Body weight", "kg")]


def observation(i: int) -> dict:
    when = START + timedelta(seconds=2 * i)
    code, display, unit = LOINC[i % 3]
    return {
        "resourceType": "Observation", "id": f"obs-{i}",
        "meta": {"versionId": "1", "lastUpdated": when.isoformat(timespec="milliseconds").replace("+00:00", "Z")},
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
        "subject": {"reference": f"Patient/pat-{i % 5000}"},
        "device": {"reference": f"Device/dev-{i % 5000}"},
        "effectiveDateTime": when.isoformat().replace("+00:00", "Z"),
        "valueQuantity": {"value": 60 + (i % 40) + (0.5 if i % 2 else 0), "unit": unit,
                          "system": "http://unitsofmeasure.org", "code": unit},
    }


def seed(path: Path, n: int) -> list[str]:
    SqliteFhirStore(path).close()  # creates the schema
    db = sqlite3.connect(path)
    bodies = []
    with db:
        for start in range(0, n, 50_000):
            rows_r, rows_v = [], []
            for i in range(start, min(n, start + 50_000)):
                doc = observation(i)
                body = json.dumps(doc, separators=(",", ":"))
                bodies.append(body)
                updated = int((START + timedelta(seconds=2 * i)).timestamp() * 1_000_000)
                rows_r.append((i + 1, "Observation", doc["id"], 1, 0, updated))
                rows_v.append((((i + 1) << 20) + 1, "PUT", doc["meta"]["lastUpdated"], body))
            db.executemany("INSERT INTO resources VALUES (?, ?, ?, ?, ?, ?)", rows_r)
            db.executemany("INSERT INTO versions VALUES (?, ?, ?, ?)", rows_v)
    db.close()
    return bodies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--observations", type=int, default=1_000_000)
    parser.add_argument("--deid-sample", type=int, default=20_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import duckdb

    work = Path(tempfile.mkdtemp(prefix="vigil-bench-analytics-"))
    try:
        bodies = seed(work / "fhir.db", args.observations)
        ndjson = work / "obs.ndjson"
        ndjson.write_text("\n".join(bodies) + "\n")

        t = time.perf_counter()
        summary = run_export(work / "fhir.db", work / "lake", formats=frozenset({"parquet"}),
                             upto=int(datetime.now(UTC).timestamp() * 1e6))
        export_s = time.perf_counter() - t
        assert summary.resources["Observation"] == args.observations

        con = duckdb.connect()
        t = time.perf_counter()
        con.execute(f"COPY (SELECT * FROM read_json('{ndjson}', format='newline_delimited')) "
                    f"TO '{work / 'floor.parquet'}' (FORMAT parquet)")
        floor_s = time.perf_counter() - t

        anon = Anonymizer(load_config("research"))
        sample = [json.loads(b) for b in bodies[: args.deid_sample]]
        t = time.perf_counter()
        for r in sample:
            anon.anonymize(r)
        deid_s = time.perf_counter() - t

        from analytics.views.duck import materialize, query

        db_path = work / "views.duckdb"
        t = time.perf_counter()
        materialize(work / "lake", db_path, names=["vital_signs"])
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        rows = query(db_path, "SELECT patient, substr(effective, 1, 10) AS day, code, avg(value) FROM vital_signs "
                              "GROUP BY ALL ORDER BY ALL LIMIT 100")
        query_ms = (time.perf_counter() - t) * 1000
        assert rows

        figures = {
            "observations": args.observations,
            "export_resources_per_s": round(args.observations / export_s),
            "floor_duckdb_ndjson_to_parquet_per_s": round(args.observations / floor_s),
            "deidentify_resources_per_s": round(len(sample) / deid_s),
            "view_build_s": round(build_s, 2),
            "view_query_ms": round(query_ms, 1),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(figures))
    else:
        for k, v in figures.items():
            print(f"{k:<40} {v}")


if __name__ == "__main__":
    main()
