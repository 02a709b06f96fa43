"""What a patient is enrolled in, cached between readings: active CarePlans, the Patient, active Goals.

Every reading needs them and they change rarely, so reading them again for each reading (two
searches and a read) is most of the cost of the enrollment lookup. A cached entry is used only
while the store's change mark for CarePlan, Goal and Patient (`SqliteFhirStore.change_mark`: a
counter per type moved in each write's own transaction, by any process on the file) is the one
seen when the entry was loaded; a write of any of those types by anyone drops every entry, so no
entry is ever older than the last write, let alone than its update event. A CarePlan event also
drops its patient's entry. A store without a change mark (the HTTP adapter: asking the server
would cost the requests the cache saves, and one instance does not see the events another
receives) is not cached: each lookup reads.

The mark is read before the resources are: a write in between makes the entry newer than its
mark, and the next lookup, seeing the mark moved, reloads it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

from fhirstore.port import ChangeMarks, FhirStore

WATCHED = ("CarePlan", "Goal", "Patient")


class Enrollment(NamedTuple):
    careplans: list[dict[str, Any]]
    patient: dict[str, Any] | None
    goals: list[dict[str, Any]]
    # What was computed from this entry (handlers.patient_data: the rules per set of active CarePlans).
    memo: dict[Any, Any]


class EnrollmentCache:
    def __init__(self, max_patients: int = 20000) -> None:
        self._entries: OrderedDict[str, Enrollment] = OrderedDict()
        self._mark: object = None
        self._max = max_patients
        self._lock = threading.Lock()
        self.hits = 0
        self.loads = 0

    def get(self, store: FhirStore, patient_ref: str, load: Callable[[], Enrollment]) -> Enrollment:
        if not isinstance(store, ChangeMarks):
            self.loads += 1
            return load()
        mark = store.change_mark(WATCHED)
        with self._lock:
            if mark != self._mark:
                self._entries.clear()
                self._mark = mark
            found = self._entries.get(patient_ref)
            if found is not None:
                self._entries.move_to_end(patient_ref)
                self.hits += 1
                return found
        found = load()
        self.loads += 1
        with self._lock:
            if self._mark == mark:
                self._entries[patient_ref] = found
                while len(self._entries) > self._max:
                    self._entries.popitem(last=False)
        return found

    def forget(self, patient_ref: str | None = None) -> None:
        """Drop a patient's entry (all entries with None): its CarePlan, Goal or Patient changed."""
        with self._lock:
            if patient_ref is None:
                self._entries.clear()
            else:
                self._entries.pop(patient_ref, None)
