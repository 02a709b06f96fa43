"""The pipeline's health for whoever runs it: bus backlog and oldest pending age per queue, FHIR
events waiting for relay, dead letters of the last 24 hours by reason. Served as a console page and
as JSON (`/console/operations.json` for staff, `/api/operations` with the local token for monitors)."""

from __future__ import annotations

import time
from typing import Any

from runtime.bootstrap import WORKFLOW_EVENTS, Services

DAY_S = 24 * 3600


def health(services: Services) -> dict[str, Any]:
    queues = {}
    if services.bus is not None:
        for topic, (count, age) in sorted(services.bus.backlog().items()):
            if topic == WORKFLOW_EVENTS:
                continue  # published events are kept a week for `vigil events tail`: not a backlog
            queues[topic] = {"pending": count, "oldest_pending_age_s": round(age, 1)}
    size = getattr(services.store, "outbox_size", None)
    since = time.time() - DAY_S
    by_reason: dict[str, int] = {}
    for letter in services.dead_letters.list(include_replayed=True, limit=10000):
        if letter.created_at >= since:
            by_reason[letter.reason] = by_reason.get(letter.reason, 0) + 1
    backlog = sum(q["pending"] for q in queues.values())
    oldest = max((q["oldest_pending_age_s"] for q in queues.values()), default=0.0)
    return {
        "bus_backlog": backlog,
        "oldest_pending_age_s": oldest,
        "queues": queues,
        "fhir_events_waiting": int(size()) if size else 0,
        "dead_letters_24h": dict(sorted(by_reason.items())),
        "dead_letters_24h_total": sum(by_reason.values()),
    }
