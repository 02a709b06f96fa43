"""Finish messages left half-done by a crash: recorded (`preparation`) but never completed.

A timer runs this. For each stale Communication it re-runs the notification of the alert the
message is about; completed messages are skipped by their deterministic keys, so only what was
left pending is sent.
"""

from __future__ import annotations

from datetime import timedelta

from common.clock import Clock, iso
from fhirstore.errors import ResourceGone, ResourceNotFound
from fhirstore.paging import search_all
from fhirstore.port import FhirStore
from handlers.alerts import RULE_SYSTEM, MessagePolicy, notify
from notifications.channels.base import Channel
from rules.simple import ThresholdRule


def resume_pending_messages(
    *,
    store: FhirStore,
    rules: list[ThresholdRule],
    channels: dict[str, Channel],
    clock: Clock,
    policy: MessagePolicy,
    older_than: timedelta = timedelta(minutes=2),
) -> int:
    """Returns how many messages were sent now."""
    cutoff = iso(clock.now() - older_than)
    stale = search_all(store, "Communication", {"status": "preparation", "_lastUpdated": f"lt{cutoff}"})
    by_id = {r.id: r for r in rules}
    sent = 0
    seen: set[str] = set()
    for comm in stale:
        for about in comm.get("about", []):
            ref = about.get("reference", "")
            if not ref.startswith("DetectedIssue/") or ref in seen:
                continue
            seen.add(ref)
            try:
                issue = store.read("DetectedIssue", ref.partition("/")[2])
            except (ResourceNotFound, ResourceGone):
                continue
            rule_ids = [c["code"] for c in issue.get("code", {}).get("coding", []) if c.get("system") == RULE_SYSTEM]
            rule = by_id.get(rule_ids[0]) if rule_ids else None
            if rule is None:
                continue
            sent += sum(1 for o in notify(store, channels, clock, rule, issue, policy) if o.status == "sent")
    return sent
