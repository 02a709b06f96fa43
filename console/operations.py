"""The pipeline's health for whoever runs it: bus backlog and oldest pending age per queue, FHIR
events waiting for relay, dead letters of the last 24 hours by reason, each channel's failure rate
over 24 hours, and how far the escalation sweep lags. Served as a console page and
as JSON (`/console/operations.json` for staff, `/api/operations` with the local token for monitors)."""

from __future__ import annotations

import time
from datetime import timedelta
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
        "fhir_events_waiting": services.outbox.outbox_size() if services.outbox is not None else 0,
        "dead_letters_24h": dict(sorted(by_reason.items())),
        "dead_letters_24h_total": sum(by_reason.values()),
        "channels_24h": channel_outcomes(services),
        "escalation_lag_s": escalation_lag_s(services),
    }


def channel_outcomes(services: Services) -> dict[str, dict[str, Any]]:
    """Messages of the last 24 hours per channel (Communication.medium): how many were recorded,
    sent (completed), refused or undelivered (not-done), and the failure rate of those decided."""
    from common.clock import iso
    from fhirstore.paging import search_all

    since = services.clock.now() - timedelta(seconds=DAY_S)
    out: dict[str, dict[str, Any]] = {}
    for comm in search_all(services.store, "Communication", {"_lastUpdated": f"ge{iso(since)}", "_count": "1000"}):
        codes = [c.get("code") for m in comm.get("medium", []) for c in m.get("coding", [])]
        row = out.setdefault(codes[0] if codes else "unknown", {"messages": 0, "completed": 0, "not_done": 0})
        row["messages"] += 1
        status = comm.get("status")
        if status == "completed":
            row["completed"] += 1
        elif status == "not-done":
            row["not_done"] += 1
    for row in out.values():
        decided = row["completed"] + row["not_done"]
        row["failure_rate"] = round(row["not_done"] / decided, 3) if decided else 0.0
    return dict(sorted(out.items()))


def escalation_lag_s(services: Services) -> float:
    """How far behind the escalation sweep runs: the longest an open escalation step has been due
    without being taken (0 when none is overdue). A sweep runs every minute, so more than a few
    minutes means the timer is not running."""
    from handlers.sweeps import escalation_candidates
    from notifications.escalation import due_of

    now = services.clock.now()
    lags = [(now - due).total_seconds() for task in escalation_candidates(services.store, now)
            if task.get("status") == "requested" and (due := due_of(task)) is not None and due <= now]
    return round(max(lags, default=0.0), 1)


# A stalled pipeline must not fail silently: past these, the staff address gets one notice per hour.
MAX_PENDING_AGE_S = 15 * 60
MAX_DEAD_LETTERS_24H = 50
MAX_ESCALATION_LAG_S = 10 * 60


def check_thresholds(services: Services, *, max_pending_age_s: float = MAX_PENDING_AGE_S,
                     max_dead_letters: int = MAX_DEAD_LETTERS_24H) -> list[str]:
    """Notify the care-team address when the pipeline looks stalled; returns the problems found.
    The message key holds the hour, so a sweep every 15 minutes sends one notice an hour."""
    from notifications.dispatch import MessageRequest, deliver

    h = health(services)
    problems = []
    if h["oldest_pending_age_s"] > max_pending_age_s:
        problems.append(f"oldest pending bus message waited {h['oldest_pending_age_s']:.0f} s")
    if h["dead_letters_24h_total"] > max_dead_letters:
        problems.append(f"{h['dead_letters_24h_total']} dead letters in 24 h")
    if h["escalation_lag_s"] > MAX_ESCALATION_LAG_S:
        problems.append(f"an escalation step is {h['escalation_lag_s']:.0f} s overdue")
    if not problems:
        return []
    now = services.clock.now()
    channel = "outbox" if "outbox" in services.channels else next(iter(services.channels))
    deliver(
        services.store,
        services.channels,
        MessageRequest(
            key=f"operations|{now:%Y-%m-%dT%H}",
            channel=channel,
            to=services.settings.staff_address,
            body=f"{services.settings.org_name}: Vigil pipeline needs attention: {'; '.join(problems)}. "
            "See /console/operations.",
            category="notification",
            tags={"recipient": "operations", "template": "operations_notice"},
        ),
        services.clock,
    )
    return problems
