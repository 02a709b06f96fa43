"""Recently seen resource versions, for `vread` without a round trip.

A version (type, id, versionId) never changes once written (FHIR R4 http.html#vread), so a copy of
one the adapter wrote or read is the answer any later `vread` of it gets from the server: no
invalidation is needed, and no other writer can make it stale. Current-version reads are never
answered from here. The event handler reads back, by version, what the ingest step of the same
process just wrote, so on the HTTP adapter this saves one request per reading. Bounded, oldest first out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from common.jsondata import json_copy
from fhirstore.port import Resource

DEFAULT_VERSIONS = 2048


class VersionCache:
    def __init__(self, max_versions: int = DEFAULT_VERSIONS) -> None:
        self._versions: OrderedDict[tuple[str, str, str], Resource] = OrderedDict()
        self._max = max_versions
        self._lock = threading.Lock()
        self.hits = 0

    def remember(self, resource: object) -> None:
        """Keep a copy of a resource as the server returned it (ignored without type, id and version)."""
        if not isinstance(resource, dict) or self._max <= 0:
            return
        version = (resource.get("meta") or {}).get("versionId")
        rtype, rid = resource.get("resourceType"), resource.get("id")
        if not (isinstance(rtype, str) and isinstance(rid, str) and version is not None):
            return
        key = (rtype, rid, str(version))
        with self._lock:
            if key in self._versions:
                return
            self._versions[key] = json_copy(resource)
            while len(self._versions) > self._max:
                self._versions.popitem(last=False)

    def get(self, resource_type: str, id: str, version_id: str) -> Resource | None:
        """A copy of the version (the caller may change it), or None."""
        with self._lock:
            found = self._versions.get((resource_type, id, str(version_id)))
            if found is None:
                return None
            self.hits += 1
        return json_copy(found)
