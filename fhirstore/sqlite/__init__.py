"""The embedded SQLite FHIR store (`SqliteFhirStore`, store.py) and its file's schema (schema.py)."""

from fhirstore.sqlite.schema import FHIR_SCHEMA, SCHEMA_VERSION
from fhirstore.sqlite.store import DEFAULT_TOPIC, SqliteFhirStore

__all__ = ["DEFAULT_TOPIC", "FHIR_SCHEMA", "SCHEMA_VERSION", "SqliteFhirStore"]
