"""A polling event source: asks the FHIR server what changed since a persisted cursor.

For servers that push nothing to Vigil (HAPI or Medplum without Subscriptions, or where no
endpoint of Vigil is reachable from the server). Each pull searches every watched type by
`_lastUpdated` (a search every R4 server supports, unlike type-level `_history`), oldest first:

    GET [base]/Observation?_lastUpdated=ge<cursor>&_lastUpdated=le<now - lag>&_sort=_lastUpdated

and delivers one event per current version found. Only the current version of a resource is seen:
two updates between pulls arrive as one event for the later version, which is what the rules act
on. The cursor is the newest `lastUpdated` delivered plus the versions delivered at exactly that
instant (a `ge` search returns them again); it is saved in the FHIR store itself, one `Basic`
resource per source and type, after every page (and when a delivery fails), so any Functions
instance (the timer runs on one at a time) resumes where the last stopped. An event whose
delivery raised is not passed: the next pull starts again from the last saved cursor, and handlers
are idempotent.

`lag` keeps the search a little behind the clock: a write whose transaction commits after a pull
saw later `lastUpdated` values would otherwise be skipped. A cursor starts at the first pull (what
was stored before polling began is not replayed), unless `start` says otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from common.clock import Clock, iso
from common.codes import vigil_system
from fhirstore.errors import ResourceGone, ResourceNotFound
from fhirstore.event_source import WATCHED_TYPES, Deliver, change_event, parse_instant
from fhirstore.port import FhirStore, Resource

log = logging.getLogger(__name__)

CURSOR_KIND = vigil_system("event-cursor")
_SINCE_EXT = vigil_system("event-cursor-since")
_SEEN_EXT = vigil_system("event-cursor-seen")


@dataclass
class Cursor:
    since: datetime
    seen: set[str] = field(default_factory=set)  # "id/versionId" delivered at exactly `since`


class FhirCursorStore:
    """Cursors kept as `Basic` resources in the FHIR store (no PHI: instants and resource ids)."""

    def __init__(self, store: FhirStore) -> None:
        self.store = store

    @staticmethod
    def _id(source: str, resource_type: str) -> str:
        return f"vigil-cursor-{source}-{resource_type}".lower()[:64]

    def load(self, source: str, resource_type: str) -> Cursor | None:
        try:
            basic = self.store.read("Basic", self._id(source, resource_type))
        except (ResourceNotFound, ResourceGone):
            return None
        ext = {e.get("url"): e for e in basic.get("extension") or []}
        since = parse_instant((ext.get(_SINCE_EXT) or {}).get("valueInstant"))
        if since is None:
            return None
        seen_text = (ext.get(_SEEN_EXT) or {}).get("valueString") or ""
        return Cursor(since, {s for s in seen_text.split(",") if s})

    def save(self, source: str, resource_type: str, cursor: Cursor) -> None:
        self.store.update({
            "resourceType": "Basic",
            "id": self._id(source, resource_type),
            "code": {"coding": [{"system": CURSOR_KIND, "code": f"{source}:{resource_type}"}]},
            "extension": [
                {"url": _SINCE_EXT, "valueInstant": _instant(cursor.since)},
                {"url": _SEEN_EXT, "valueString": ",".join(sorted(cursor.seen))},
            ],
        })


class PollingSource:
    """`EventSource` over `_lastUpdated` searches, with a cursor per type in `cursors`."""

    def __init__(
        self,
        store: FhirStore,
        cursors: FhirCursorStore,
        clock: Clock,
        *,
        account: str,
        name: str = "poll",
        types: tuple[str, ...] = WATCHED_TYPES,
        page_size: int = 100,
        lag: timedelta = timedelta(seconds=5),
        start: datetime | None = None,
    ) -> None:
        self.name = name
        self.store = store
        self.cursors = cursors
        self.clock = clock
        self.account = account
        self.types = types
        self.page_size = page_size
        self.lag = lag
        self.start = start
        self.topic = f"urn:vigil:event-source:{name}"

    def pull(self, deliver: Deliver, *, limit: int = 1000) -> int:
        delivered = 0
        upper = self.clock.now() - self.lag
        for resource_type in self.types:
            if delivered >= limit:
                break
            delivered += self._pull_type(resource_type, deliver, upper, limit - delivered)
        return delivered

    def _pull_type(self, resource_type: str, deliver: Deliver, upper: datetime, limit: int) -> int:
        cursor = self.cursors.load(self.name, resource_type)
        if cursor is None:
            cursor = Cursor(self.start or upper)
            self.cursors.save(self.name, resource_type, cursor)
            log.info("event source %s: %s changes are read from %s on", self.name, resource_type, iso(cursor.since))
        delivered = 0
        params: dict[str, Any] | None = self._query(cursor, upper)
        while params is not None and delivered < limit:
            page = self.store.search(resource_type, params)
            new = 0
            try:
                for resource in page.resources:
                    if delivered + new >= limit:
                        break
                    new += self._deliver_one(resource, cursor, deliver)
            finally:
                # Also when a delivery raised: the cursor holds only what was delivered.
                self.cursors.save(self.name, resource_type, cursor)
            delivered += new
            if len(page.resources) < self.page_size or page.next_params is None:
                break
            # Each page is asked for from the cursor (keyset paging): following offset-based next
            # links would skip a change when an earlier match is updated (and leaves the window)
            # between two pages. Only a page that was all already-seen versions at one instant
            # follows the next link, since asking from the cursor again would return it again.
            params = page.next_params if new == 0 else self._query(cursor, upper)
        return delivered

    def _query(self, cursor: Cursor, upper: datetime) -> dict[str, Any] | None:
        if cursor.since > upper:
            return None
        return {"_lastUpdated": [f"ge{_instant(cursor.since)}", f"le{_instant(upper)}"],
                "_sort": "_lastUpdated", "_count": str(self.page_size)}

    def _deliver_one(self, resource: Resource, cursor: Cursor, deliver: Deliver) -> int:
        meta = resource.get("meta") or {}
        updated = parse_instant(meta.get("lastUpdated"))
        key = f"{resource.get('id')}/{meta.get('versionId')}"
        if updated is None or updated < cursor.since or (updated == cursor.since and key in cursor.seen):
            return 0  # delivered by an earlier pull (or without the metadata a change needs)
        payload = change_event(resource, account=self.account, topic=self.topic)
        if payload is None:
            return 0
        deliver(payload)  # raises: the cursor stays before this change
        if updated > cursor.since:
            cursor.since, cursor.seen = updated, {key}
        else:
            cursor.seen.add(key)
        return 1


def _instant(at: datetime) -> str:
    """Microsecond FHIR instant: a cursor must not round past what it delivered."""
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
