"""Analytics: SQL-on-FHIR views, incremental export to NDJSON/Parquet, de-identification (docs/analytics.md).

May import ``fhirstore`` and ``common`` only.
"""
