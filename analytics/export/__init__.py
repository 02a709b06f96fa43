"""Incremental export of the FHIR store to NDJSON and Parquet (docs/analytics.md, "Export")."""

from analytics.export.exporter import ExportError, ExportSummary, run_export

__all__ = ["ExportError", "ExportSummary", "run_export"]
