"""The analytics export wired from settings: which source, which destination, and the scheduled run
the `lake_export` timer calls (triggers/lake_export.py). docs/analytics.md, "Sources", "Destinations"."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from analytics.export.destination import Destination, open_destination
from analytics.export.exporter import ExportSummary, Source, run_export
from common.clock import Clock
from runtime.settings import Settings, SettingsError

log = logging.getLogger(__name__)


def source_kind(settings: Settings, asked: str | None = None) -> str:
    kind = asked or settings.export_source
    if kind == "auto":
        return "embedded" if settings.embedded else "search"
    return kind


def _token(settings: Settings, fhir_url: str) -> Any:
    """A per-request bearer token getter: azure-identity with VIGIL_FHIR_AUTH=azure, else the fixed token."""
    if settings.fhir_auth == "azure":
        from urllib.parse import urlsplit

        from azure.identity import DefaultAzureCredential

        parts = urlsplit(fhir_url)
        scope = settings.fhir_scope or f"{parts.scheme}://{parts.netloc}/.default"
        credential = DefaultAzureCredential()
        return lambda: credential.get_token(scope).token  # the credential caches and refreshes it
    token = settings.export_fhir_token
    return (lambda: token) if token else None


def build_source(settings: Settings, kind: str, *, fhir_url: str | None = None,
                 types: list[str] | None = None) -> Source | None:
    """A remote source (None for the embedded store, which run_export opens from its path)."""
    if kind == "embedded":
        return None
    url = fhir_url or settings.fhir_url
    if not url:
        raise SettingsError(f"an export from a FHIR server ({kind}) needs its URL: --fhir-url or VIGIL_FHIR_URL")
    from analytics.export.http import FhirHttp

    http = FhirHttp(url, token=_token(settings, url))
    wanted = types if types is not None else [t.strip() for t in settings.export_types.split(",") if t.strip()]
    if kind == "bulk":
        from analytics.export.bulk_source import BulkExportSource

        return BulkExportSource(http, wanted or None)
    if kind == "search":
        from analytics.export.remote_source import FhirServerSource

        try:
            return FhirServerSource(http, wanted or None)
        except Exception:
            http.close()
            raise
    raise SettingsError(f"unknown export source {kind!r}: embedded, search or bulk")


def build_destination(settings: Settings, dest: str | Path, api: str | None = None) -> Destination:
    credential = None
    key = settings.export_storage_key
    text = str(dest)
    if text.startswith(("abfss://", "https://", "http://")) and not key:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    return open_destination(dest, account_key=key, credential=credential, api=api or settings.export_storage_api)


def formats_of(text: str) -> frozenset[str]:
    return frozenset(f.strip() for f in text.split(",") if f.strip())


def scheduled_export(settings: Settings, *, clock: Clock | None = None, progress: bool = False) -> ExportSummary | None:
    """One incremental run to VIGIL_EXPORT_DEST (the timer's whole job); None when no destination is set.

    The timer is a singleton on Azure (use_monitor; one instance holds the schedule's lease), and a run the
    host killed is redone by the next one from the destination's state, so overlapping or lost runs
    cannot leave a gap or a duplicate."""
    if not settings.export_dest:
        log.info("lake_export: VIGIL_EXPORT_DEST is not set, nothing to export")
        return None
    kind = source_kind(settings)
    source = build_source(settings, kind)
    destination = build_destination(settings, settings.export_dest)
    try:
        summary = run_export(settings.path("fhir.db") if kind == "embedded" else None, destination, source=source,
                             formats=formats_of(settings.export_formats),
                             grace_s=settings.export_grace_s, clock=clock, progress=progress)
    finally:
        destination.close()
        if source is not None:
            source.close()
    # Counts and types only: no ids, no URLs with queries (docs/analytics.md).
    log.info("lake_export %s: %d resources, %d deletes, %d files in %.1f s from %s", summary.run_id,
             sum(summary.resources.values()), sum(summary.deleted.values()), summary.files, summary.seconds, kind)
    if summary.deletes_not_seen:
        log.warning("lake_export: deletes of %s are not visible through a paged search",
                    ", ".join(summary.deletes_not_seen))
    return summary
