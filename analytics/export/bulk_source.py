"""Changes from a FHIR server's Bulk Data `$export` (https://hl7.org/fhir/uv/bulkdata/export.html).

Kick-off `GET [base]/$export?_since=…&_type=…` with `Prefer: respond-async` (202 and a `Content-Location`
status URL), poll the status URL (202 with `Retry-After` while it runs, then 200 with the manifest),
download each `output[].url` NDJSON file. The window's end is the server's: the manifest's
`transactionTime` (the spec: resources changed after it are not in the export), so a run's window is
``(watermark, transactionTime]`` and the next run's `_since` is exactly this run's end. A run that was
interrupted kicks off again from the same `_since`; only the whole window is ever committed.

Deletes: the base `$export` lists live resources only. Bulk Data 2.0 lets a server add `deleted` files
(Bundles of `DELETE` entries) to an export with `_since` (the facade does, at system level); when the
manifest has a `deleted` list, its entries become tombstones, otherwise the summary says the deletes were
not visible.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from analytics.export.http import FhirHttp, RemoteError, retry_after_s
from analytics.export.remote_source import iso_ms, micros_of
from analytics.export.source import Change
from common import jsonnum

log = logging.getLogger(__name__)

NDJSON = "application/fhir+ndjson"


class BulkExportSource:
    """System-level `$export` of a FHIR server (optionally limited to `types`)."""

    kind = "bulk"

    def __init__(self, http: FhirHttp, types: list[str] | None = None, *, poll_timeout_s: float = 3600.0,
                 max_poll_wait_s: float = 60.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.http = http
        self.types = types or []
        self.poll_timeout_s = poll_timeout_s
        self.max_poll_wait_s = max_poll_wait_s
        self._sleep = sleep
        self.deletes_visible: dict[str, bool] = {}
        self.methods: dict[str, str] = {}

    def close(self) -> None:
        self.http.close()

    def open(self, after: int, upto: int) -> BulkWindow:
        """Kick off and wait for the manifest. `upto` is ignored: the server's transactionTime ends the window."""
        params = [("_outputFormat", NDJSON)]
        if after > 0:
            params.append(("_since", iso_ms(after)))
        if self.types:
            params.append(("_type", ",".join(self.types)))
        kick = self.http.get("$export", params=params, headers={"Prefer": "respond-async"},
                             ok=frozenset({202}))
        status_url = kick.headers.get("Content-Location")
        if not status_url:
            raise RemoteError("the $export kick-off answered 202 without a Content-Location status URL")
        manifest = self._poll(status_url)
        window = BulkWindow(self, after, manifest, status_url)
        for rtype in window.types():
            self.methods[rtype] = "bulk"
            # A server that reports deletes lists `deleted` (maybe empty); the first run has none to see.
            self.deletes_visible[rtype] = "deleted" in manifest or after == 0
        return window

    def _poll(self, status_url: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.poll_timeout_s
        while True:
            response = self.http.get(status_url, ok=frozenset({200, 202}))
            if response.status_code == 200:
                manifest = response.json()
                if not isinstance(manifest, dict) or not isinstance(manifest.get("transactionTime"), str):
                    raise RemoteError("the $export manifest has no transactionTime")
                if manifest.get("error"):
                    raise RemoteError(f"the $export job reported {len(manifest['error'])} error file(s)")
                return manifest
            if time.monotonic() > deadline:
                raise RemoteError(f"the $export job did not finish within {self.poll_timeout_s:.0f} s")
            wait = retry_after_s(response.headers)
            self._sleep(min(self.max_poll_wait_s, wait if wait is not None else 1.0))


class BulkWindow:
    def __init__(self, source: BulkExportSource, after: int, manifest: dict[str, Any], status_url: str) -> None:
        self.source, self.after, self.manifest, self.status_url = source, after, manifest, status_url
        self.upto = max(after, micros_of(manifest["transactionTime"]))
        self.outputs: dict[str, list[str]] = {}
        self.deleted: list[str] = [str(d["url"]) for d in manifest.get("deleted") or [] if isinstance(d, dict)]
        counts: dict[str, int] = {}
        for item in manifest.get("output") or []:
            if isinstance(item, dict) and isinstance(item.get("type"), str) and isinstance(item.get("url"), str):
                self.outputs.setdefault(item["type"], []).append(item["url"])
                counts[item["type"]] = counts.get(item["type"], 0) + int(item.get("count") or 0)
        self.total: int | None = sum(counts.values()) if counts else 0
        self._tombstones: dict[str, list[Change]] | None = None
        self._accept = {"Accept": NDJSON}

    def types(self) -> list[str]:
        return sorted(set(self.outputs) | set(self._deletes()))

    def changes(self, resource_type: str) -> Iterator[Change]:
        latest: dict[str, Change] = {}
        for url in self.outputs.get(resource_type, []):
            response = self.source.http.get(url, headers=self._accept)
            for number, line in enumerate(response.text.splitlines(), 1):
                if not line.strip():
                    continue
                latest_change = _line_change(line, resource_type, number)
                latest[latest_change.id] = latest_change
        for gone in self._deletes().get(resource_type, []):
            if gone.id not in latest:  # a resource re-created after its delete is live
                latest[gone.id] = gone
        yield from sorted(latest.values(), key=lambda c: (c.updated, c.id))

    def _deletes(self) -> dict[str, list[Change]]:
        if self._tombstones is None:
            self._tombstones = {}
            for url in self.deleted:
                text = self.source.http.get(url, headers=self._accept).text
                for line in text.splitlines():
                    if line.strip():
                        for change in _bundle_deletes(jsonnum.loads(line), self.upto):
                            self._tombstones.setdefault(change.resource_type, []).append(change)
        return self._tombstones

    def finish(self) -> None:
        """Tell the server the files may go (DELETE on the status URL, as the spec suggests when done)."""
        try:
            self.source.http.delete(self.status_url)
        except RemoteError as exc:
            log.info("the finished $export job could not be deleted: %s", exc)


def _line_change(line: str, resource_type: str, number: int) -> Change:
    try:
        resource = jsonnum.loads(line)
    except ValueError:
        raise RemoteError(f"{resource_type} NDJSON line {number} is not JSON") from None
    if not isinstance(resource, dict) or resource.get("resourceType") != resource_type \
            or not isinstance(resource.get("id"), str):
        raise RemoteError(f"{resource_type} NDJSON line {number} is not a {resource_type} with an id")
    meta = resource.get("meta") or {}
    stamp = meta.get("lastUpdated")
    if not isinstance(stamp, str):
        raise RemoteError(f"{resource_type} NDJSON line {number} has no meta.lastUpdated")
    version = str(meta.get("versionId") or "")
    return Change(resource_type, resource["id"], int(version) if version.isdigit() else 0, False,
                  micros_of(stamp), stamp, line)


def _bundle_deletes(bundle: Any, upto: int) -> Iterator[Change]:
    if not isinstance(bundle, dict):
        return
    for entry in bundle.get("entry") or []:
        request = (entry or {}).get("request") or {}
        if request.get("method") != "DELETE":
            continue
        parts = str(request.get("url") or "").split("?")[0].strip("/").split("/")
        if len(parts) != 2:
            continue
        response = entry.get("response") or {}
        stamp = response.get("lastModified") or iso_ms(upto)
        etag = str(response.get("etag") or "").removeprefix("W/").strip('"')
        yield Change(parts[0], parts[1], int(etag) if etag.isdigit() else 0, True, micros_of(stamp), stamp, None)
