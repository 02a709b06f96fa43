"""The embedded FHIR store's tables, and the version-key layout every module of the store shares.

`resources` holds each resource's current version, `versions` every version's JSON, `tok`/`ref`/`dt`
the search index rows of the current version only, `outbox` the undelivered events, `type_changes`
a change counter per resource type, and `readings` the readings index (fhirstore/readings_index.py).
"""

from __future__ import annotations

from common.sqlite_schema import Schema
from fhirstore import readings_index

# versions.vkey = rid << 20 | version: one integer primary key per version, so a version lookup
# and a resource's history are rowid range reads with no extra index.
VERSION_BITS = 20
MAX_VERSION = (1 << VERSION_BITS) - 1

_SCHEMA_1 = """
CREATE TABLE IF NOT EXISTS resources (
  rid INTEGER PRIMARY KEY,
  type TEXT NOT NULL,
  id TEXT NOT NULL,
  version INTEGER NOT NULL,
  deleted INTEGER NOT NULL,
  updated INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS resources_type_id ON resources (type, id);
CREATE INDEX IF NOT EXISTS resources_type_updated ON resources (type, updated);
CREATE TABLE IF NOT EXISTS versions (
  vkey INTEGER PRIMARY KEY,
  method TEXT NOT NULL,
  at TEXT NOT NULL,
  body TEXT
);
CREATE TABLE IF NOT EXISTS params (pid INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS tok (
  rid INTEGER NOT NULL, pid INTEGER NOT NULL, code TEXT NOT NULL, system TEXT NOT NULL,
  PRIMARY KEY (rid, pid, code, system)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tok_value ON tok (pid, code, system);
CREATE TABLE IF NOT EXISTS ref (
  rid INTEGER NOT NULL, pid INTEGER NOT NULL, target_id TEXT NOT NULL, target_type TEXT NOT NULL,
  hi INTEGER NOT NULL,
  PRIMARY KEY (rid, pid, target_id, target_type)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ref_value ON ref (pid, target_id, hi, target_type);
CREATE TABLE IF NOT EXISTS dt (
  rid INTEGER NOT NULL, pid INTEGER NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL,
  PRIMARY KEY (rid, pid, lo, hi)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dt_lo ON dt (pid, lo);
CREATE INDEX IF NOT EXISTS dt_hi ON dt (pid, hi);
CREATE TABLE IF NOT EXISTS spans (pid INTEGER PRIMARY KEY, span INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, vkey INTEGER NOT NULL, action TEXT NOT NULL
);
"""
# Version 2: per-type change counters (caches check them), the outbox looked up by version, and
# the readings index the rules' windows read (fhirstore/readings_index.py; built on open).
_SCHEMA_2 = """
CREATE TABLE IF NOT EXISTS type_changes (type TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_vkey ON outbox (vkey);
""" + readings_index.SCHEMA
# Step i takes a file from version i to i + 1 (common/sqlite_schema.py); a table change is a new step.
FHIR_SCHEMA = Schema("FHIR store", [_SCHEMA_1, _SCHEMA_2])
SCHEMA_VERSION = FHIR_SCHEMA.version


def vkey(rid: int, version: int) -> int:
    """The `versions` key of a resource's version."""
    return (rid << VERSION_BITS) + version
