"""The Bulk Data client's status polling (analytics/export/bulk_source.py): a 202 with Retry-After
(https://hl7.org/fhir/uv/bulkdata/export.html#bulk-data-status-request) is waited out, capped; without
one the client polls every second. This is the protocol's polling, not a retry of a failure."""

from __future__ import annotations

import httpx

from analytics.export.bulk_source import BulkExportSource
from analytics.export.http import FhirHttp

BASE = "https://fhir.example.test/r4"
STATUS = f"{BASE}/$export-poll-status/job-1"


def test_poll_waits_what_each_202_asks_capped_then_reads_the_manifest() -> None:
    manifest = {"transactionTime": "2026-01-01T00:00:00Z", "request": f"{BASE}/$export", "output": []}
    answers = [
        httpx.Response(202, headers={"Content-Location": STATUS}),
        httpx.Response(202, headers={"Retry-After": "3", "X-Progress": "10%"}),
        httpx.Response(202, headers={"Retry-After": "600"}),
        httpx.Response(202),
        httpx.Response(200, json=manifest),
    ]
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return answers.pop(0)

    waits: list[float] = []
    http = FhirHttp(BASE, client=httpx.Client(transport=httpx.MockTransport(handle)), sleep=waits.append)
    source = BulkExportSource(http, max_poll_wait_s=60.0, sleep=waits.append)
    source.open(0, 0)
    assert waits == [3.0, 60.0, 1.0]
    assert seen == ["/r4/$export"] + ["/r4/$export-poll-status/job-1"] * 4
