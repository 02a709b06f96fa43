"""The embedded store's readings index: rule windows without parsing stored JSON.

One row per reading of a known metric (`rules.readings`) in the current version of each
Observation: patient, metric, effective range, canonical value, Observation id and version. The
store writes the rows in the same SQLite transaction as the Observation and drops them with its
index rows, so the index holds exactly the readings of the current versions, whatever crashes in
between. A window read answers what `handlers.patient_data.load_readings` would get by searching
Observations by subject, code and `date=ge` and decoding each body: the same code lists per metric
(an Observation is indexed under a metric only when it carries one of that metric's codes) and the
same date semantics (the store's `ge`, FHIR R4 search §3.1.1.4.1, on the effective range).

A file written before the index existed is indexed from its stored Observations when opened
(`build`), once: the `readings_built` row records that it was.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from common import jsonnum
from common.codes import ALTERNATE_CODES, LOINC
from fhirstore.index_rows import IndexRows, extractor_for, parse_date_range
from rules.readings import Reading, ReadingError, observation_code_for, readings_from_observation

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
  patient TEXT NOT NULL, metric TEXT NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL,
  at INTEGER NOT NULL, rid INTEGER NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
  value REAL NOT NULL, original_value REAL, original_unit TEXT
);
CREATE INDEX IF NOT EXISTS readings_window ON readings (patient, metric, hi);
CREATE INDEX IF NOT EXISTS readings_rid ON readings (rid);
CREATE TABLE IF NOT EXISTS readings_built (one INTEGER PRIMARY KEY CHECK (one = 1), at TEXT NOT NULL);
"""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INSERT = ("INSERT INTO readings (patient, metric, lo, hi, at, rid, id, version, value, original_value,"
           " original_unit) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def metric_codes(metric: str) -> list[str]:
    """The LOINC codes an Observation of `metric` may carry: the primary one, then alternates."""
    primary = observation_code_for(metric)
    return [primary, *(code for code, alias in ALTERNATE_CODES.items() if alias == metric and code != primary)]


_CODES: dict[str, frozenset[str]] = {}


def _codes(metric: str) -> frozenset[str]:
    found = _CODES.get(metric)
    if found is None:
        found = _CODES[metric] = frozenset(metric_codes(metric))
    return found


def rows_for(doc: dict[str, Any], rows: IndexRows, rid: int, version: int) -> list[tuple[Any, ...]]:
    """The index rows of one stored Observation version (none for one without readings or that
    `rules.readings` cannot read: the event handler dead-letters that one, the window skips it)."""
    patients = [f"{kind}/{target}" for p, target, kind in rows.refs if p == "subject" and kind == "Patient"]
    dates = [(lo, hi) for p, lo, hi in rows.dates if p == "date"]
    if not patients or not dates:
        return []
    try:
        readings = readings_from_observation(doc)
    except ReadingError:
        return []
    loinc = {code for p, code, system in rows.tokens if p == "code" and system == LOINC}
    lo, hi = dates[0]
    return [(patients[0], r.metric, lo, hi, _micros(r.effective), rid, doc["id"], version, r.value,
             r.original_value, r.original_unit)
            for r in readings if loinc & _codes(r.metric)]


def write(db: sqlite3.Connection, doc: dict[str, Any], rows: IndexRows, rid: int, version: int) -> None:
    found = rows_for(doc, rows, rid, version)
    if found:
        db.executemany(_INSERT, found)


def drop(db: sqlite3.Connection, rid: int) -> None:
    db.execute("DELETE FROM readings WHERE rid = ?", (rid,))


def build(db: sqlite3.Connection, at: str, version_bits: int) -> int:
    """Index every current Observation of a file written before the index (inside the caller's
    write transaction); a no-op once done. Returns how many rows it wrote."""
    if db.execute("SELECT 1 FROM readings_built").fetchone():
        return 0
    db.execute("DELETE FROM readings")  # a half-built index cannot exist (one transaction), but be exact
    extract = extractor_for("Observation")
    written = 0
    cursor = db.execute("SELECT r.rid, r.version, v.body FROM resources r JOIN versions v"
                        " ON v.vkey = (r.rid << ?) + r.version WHERE r.type = 'Observation' AND r.deleted = 0",
                        (version_bits,))
    for rid, version, body in cursor.fetchall():
        doc = jsonnum.loads(body)
        try:
            index_rows = extract(doc)
        except ValueError:
            continue
        found = rows_for(doc, index_rows, rid, version)
        db.executemany(_INSERT, found)
        written += len(found)
    db.execute("INSERT INTO readings_built (one, at) VALUES (1, ?)", (at,))
    return written


def window(db: sqlite3.Connection, patient_ref: str, metrics: Iterable[str], since: str) -> list[Reading]:
    """Readings of `metrics` for the patient whose effective range matches `date=ge<since>`."""
    slo, shi = parse_date_range(since)
    wanted = sorted(set(metrics))
    if not wanted:
        return []
    marks = ",".join("?" * len(wanted))
    found = db.execute(
        "SELECT metric, value, at, id, original_value, original_unit FROM readings"
        f" WHERE patient = ? AND metric IN ({marks}) AND hi >= ? AND (hi > ? OR (lo >= ? AND hi <= ?))",
        (patient_ref, *wanted, slo, shi, slo, shi)).fetchall()
    return [Reading(metric, value, _EPOCH + timedelta(microseconds=at), f"Observation/{id}", original, unit)
            for metric, value, at, id, original, unit in found]


def _micros(when: datetime) -> int:
    return (when - _EPOCH) // timedelta(microseconds=1)
