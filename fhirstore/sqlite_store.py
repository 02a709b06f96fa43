"""The embedded store's former import path, kept so code written against it keeps importing.

The store is the package `fhirstore.sqlite` (store, schema, versions, query, bundle, outbox); import
from there. This module only re-exports its public names and is to be deleted once nothing imports it.
"""

from fhirstore.sqlite import DEFAULT_TOPIC, FHIR_SCHEMA, SCHEMA_VERSION, SqliteFhirStore

__all__ = ["DEFAULT_TOPIC", "FHIR_SCHEMA", "SCHEMA_VERSION", "SqliteFhirStore"]
