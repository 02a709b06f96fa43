"""Device messages in → FHIR Observations out, with every message accounted for.

The same handler serves the Event Hubs trigger (a batch), the local bus and the HTTP ingest
endpoint. Messages are mapped with MedTech-compatible templates (ingest/templates), identities are
resolved against the FHIR store on every batch (no stale device→patient cache), and the batch's
Observations are written in ONE FHIR transaction where the server allows. Safe to re-deliver:
Observation ids are deterministic and an unchanged merge writes nothing.

Every received message ends in exactly one outcome (docs/ingest-accounting.md):

* **written** — its values are in the store (new, merged, or already there);
* **superseded** — every reading it carried was replaced by a later message of the same batch with
  the same device, type and time (MedTech keeps the one ingested last), and that message was written;
* **dead-lettered** — with a specific reason (templates, identity, plausibility, or `ingest.poison`).

A message that is dead-lettered contributes nothing: its readings are taken out and the batch is
mapped again without them, so an invalid later message never erases a valid earlier one.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from fhirstore.errors import FhirError
from handlers.ingest_messages import IngestDeps, RawMessage, decode_message, park_message
from handlers.ingest_writes import StoredObservations, Write, write_all
from ingest.plausibility import check_observation
from ingest.poison import POISON_AT_STORE, poison_error
from ingest.report import DEAD_LETTERED, SUPERSEDED, WRITTEN, IngestReport, notify, reports_to
from ingest.templates import group_measurements
from ingest.templates.errors import MappingFailure, MessageError
from ingest.templates.fhir_model import ObservationChange
from ingest.templates.grouping import MeasurementGroup
from ingest.templates.measurement import Measurement

log = logging.getLogger(__name__)

__all__ = ["DEAD_LETTERED", "SUPERSEDED", "WRITTEN", "IngestDeps", "IngestReport", "RawMessage",
           "handle_device_messages", "reports_to"]


def handle_device_messages(messages: list[RawMessage], deps: IngestDeps) -> IngestReport:
    """Ingest a batch. Bad messages are parked with a reason; the rest of the batch goes on.
    A transient FHIR failure raises, so the trigger fails and the batch is delivered again."""
    batch = _Batch(messages, deps)
    for i, message in enumerate(messages):
        batch.decode(i, message)
    batch.identity = deps.identity.for_batch(m.device_id for ms in batch.readings.values() for m in ms)
    todo = sorted(batch.readings)
    while todo:  # a second pass only when a write refused a message that superseded another one
        plan = batch.plan(todo)
        batch.write(plan)
        todo = batch.settle(plan)
    report = batch.report
    report.outcomes = [batch.outcome.get(i) for i in range(len(messages))]
    report.written = report.outcomes.count(WRITTEN)
    report.superseded = report.outcomes.count(SUPERSEDED)
    if report.dead_lettered:
        log.warning("ingest batch: %d of %d messages dead-lettered %s", report.dead_lettered, report.received,
                    dict(report.reasons))
    if report.unaccounted:  # a bug, not an input problem: say so loudly
        log.error("ingest batch: %d of %d messages without an outcome", report.unaccounted, report.received)
    notify(report)
    return report


@dataclass
class _Plan:
    """What one mapping pass over some of the batch's messages decided to write."""

    messages: list[int]
    stored: StoredObservations
    writes: dict[str, Write] = field(default_factory=dict)  # Observation id -> what is written there
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)  # Observation id -> resource as merged
    contributors: set[int] = field(default_factory=set)  # messages with readings in `writes`
    slots: dict[tuple[Any, ...], int] = field(default_factory=dict)  # (Observation id, time) -> message
    shared: set[tuple[str, str]] = field(default_factory=set)  # (device, type) of several group keys
    superseded_by: dict[int, set[int]] = field(default_factory=dict)  # message -> the messages replacing it

    def existing(self, oid: str) -> dict[str, Any] | None:
        # Two groups of one batch can land in one Observation (e.g. readings of the same hour with
        # and without a patient id): the later one merges onto what the earlier one will write, and
        # the batch writes each Observation once (If-Match on the stored version: ingest_writes).
        return self.pending[oid] if oid in self.pending else self.stored.get(oid)

    def add(self, changes: list[ObservationChange], sources: set[int]) -> None:
        for change in changes:
            earlier = self.writes.get(change.id)
            if earlier is None:
                self.writes[change.id] = Write(change, set(sources))
                continue
            # Merged onto the earlier change (see existing()): it holds both. A create stays a create.
            kept = earlier.change if change.action == "noop" else _combine(earlier.change, change)
            self.writes[change.id] = Write(kept, earlier.messages | sources)
        for change in changes:
            if change.action != "noop":
                self.pending[change.id] = change.resource
        self.contributors |= sources


def _key(m: Measurement) -> tuple[str, str, str | None, str | None, str | None]:
    """MedTech's grouping key (ingest/templates/grouping.py)."""
    return (m.device_id, m.type, m.patient_id, m.encounter_id, m.correlation_id)


class _Batch:
    def __init__(self, messages: list[RawMessage], deps: IngestDeps) -> None:
        self.messages = messages
        self.deps = deps
        self.pair = deps.templates()
        self.now = deps.clock.now()
        self.report = IngestReport(received=len(messages))
        self.outcome: dict[int, str] = {}
        self.readings: dict[int, list[Measurement]] = {}  # message -> its measurements
        self.owner: dict[int, int] = {}  # id(measurement) -> message
        self.identity = deps.identity  # for_batch() once the batch is decoded
        self.stored = StoredObservations(deps.store)

    def dead(self, i: int) -> bool:
        return self.outcome.get(i) == DEAD_LETTERED

    def park(self, i: int, error: MessageError) -> None:
        if self.dead(i):
            return
        self.outcome[i] = DEAD_LETTERED
        park_message(self.deps, self.messages[i], error, self.pair.version, self.report)

    def decode(self, i: int, message: RawMessage) -> None:
        """One message at a time (handlers.ingest_messages): nothing it holds may stop the batch."""
        decoded = decode_message(message, self.deps, self.pair.devices, self.now)
        if isinstance(decoded, MessageError):
            self.park(i, decoded)
            return
        self.readings[i] = decoded
        for m in decoded:
            self.owner[id(m)] = i

    # -- mapping ----------------------------------------------------------------------------------
    def plan(self, todo: list[int]) -> _Plan:
        """Map the readings of `todo` to Observation changes. A message parked after its readings
        were merged into a change makes the pass start again without it."""
        while True:
            plan = _Plan(messages=[i for i in todo if not self.dead(i)], stored=self.stored)
            by_key: dict[tuple[Any, ...], list[Measurement]] = {}
            for i in plan.messages:  # batch order: among same-time readings the later message wins
                for m in self.readings[i]:
                    by_key.setdefault(_key(m), []).append(m)
            self._prefetch(by_key.values())
            # Only groups sharing device and type with another group can write the same Observation.
            per_source = Counter((key[0], key[1]) for key in by_key)
            plan.shared = {source for source, n in per_source.items() if n > 1}
            if all(self._map_key(ms, plan) for ms in by_key.values()):
                return plan

    def _prefetch(self, keys: Iterable[list[Measurement]]) -> None:
        """Read every Observation the groups can merge into at once (handlers.ingest_writes). Only
        a forecast: a group whose identity or grouping fails here fails the same way when mapped,
        which parks its culprits."""
        if not self.stored.round_trips:
            return
        ids = []
        for ms in keys:
            try:
                [group] = group_measurements(ms)
                who = self.identity.resolve(group)
                for obs_group in self.pair.fhir.observation_groups(group):
                    ids.append(self.pair.fhir.observation_key(obs_group, patient_id=who.patient_id,
                                                              device_id=who.device_id)[2])
            except (MappingFailure, FhirError, *POISON_AT_STORE):
                continue
        self.stored.prefetch(ids)

    def _map_key(self, ms: list[Measurement], plan: _Plan) -> bool:
        """Map one group key. On failure the culprits are parked and the key is mapped again without
        them, so a reading they superseded gets its turn. False: start the pass again."""
        ms = [m for m in ms if not self.dead(self.owner[id(m)])]  # parked while mapping an earlier key
        cross: dict[int, int] = {}  # id(reading) -> the later message holding its (Observation, time)
        while ms:
            active = [m for m in ms if id(m) not in cross]
            if active:
                [group] = group_measurements(active)
                kept = {id(m) for m in group.measurements}
                culprits = self._invalid_replaced(ms, kept) or self._map_group(ms, group, plan, cross)
            else:  # every reading replaced by later messages' readings merged into the same slots
                culprits = self._invalid_replaced(ms, set())
                if not culprits:
                    for m in ms:
                        plan.superseded_by.setdefault(self.owner[id(m)], set()).add(cross[id(m)])
            if culprits is None:
                continue  # some readings are replaced by later ones of another key: map the rest
            if not culprits:
                return True
            for i, error in culprits.items():
                self.park(i, error)
            if plan.contributors & culprits.keys():
                return False
            ms = [m for m in ms if not self.dead(self.owner[id(m)])]
        return True

    def _map_group(self, ms: list[Measurement], group: MeasurementGroup, plan: _Plan,
                   cross: dict[int, int]) -> dict[int, MessageError] | None:
        """Add the group's changes to the plan ({}), say which messages to park and why, or None when
        some of its readings turned out replaced by later messages (`cross`) and it must be regrouped."""
        sources = list(dict.fromkeys(self.owner[id(m)] for m in group.measurements))
        try:
            who = self.identity.resolve(group)
        except MappingFailure as failure:  # identity is the key's: every reading of it fails alike
            return dict.fromkeys({self.owner[id(m)] for m in ms}, failure.to_error(type_name=group.type))
        except POISON_AT_STORE as exc:
            return dict.fromkeys({self.owner[id(m)] for m in ms}, poison_error(exc, "resolving identities"))
        try:
            slots = self._slots(group, who, plan)
            taken = {id(m): holder for m, slot in slots if (holder := plan.slots.get(slot, -1)) > self.owner[id(m)]}
            if taken:
                cross.update(taken)
                return None
            changes = self._changes(group, who, plan)
        except (MappingFailure, *POISON_AT_STORE) as exc:
            return self._culprits(group, who, sources, plan, _error(exc, group))
        plan.add(changes, set(sources))
        self._record(ms, group, slots, plan, cross)
        return {}

    def _slots(self, group: MeasurementGroup, who: Any, plan: _Plan) -> list[tuple[Measurement, tuple[Any, ...]]]:
        """Each reading's (Observation id, time): where the merge puts it. A group no other group of
        the pass can meet in an Observation gets slots of its own (saving the ids' computation)."""
        if (group.device_id, group.type) not in plan.shared:
            return [(m, (group.key, m.occurrence_time)) for m in group.measurements]
        out: list[tuple[Measurement, tuple[Any, ...]]] = []
        for obs_group in self.pair.fhir.observation_groups(group):
            _, _, obs_id = self.pair.fhir.observation_key(obs_group, patient_id=who.patient_id,
                                                          device_id=who.device_id)
            out += [(m, (obs_id, m.occurrence_time)) for m in group.measurements
                    if obs_group.start <= m.occurrence_time <= obs_group.end]
        return out

    def _invalid_replaced(self, ms: list[Measurement], kept: set[int]) -> dict[int, MessageError]:
        """Readings replaced by a later one are checked all the same: whether a message is dead-lettered
        depends on the message, not on which other messages share its batch (a re-delivery may not)."""
        found: dict[int, MessageError] = {}
        for m in ms:
            if id(m) in kept or self.owner[id(m)] in found:
                continue
            [alone] = group_measurements([m])
            try:  # ids do not matter to what is checked: the mapping and the plausible ranges
                for change in self.pair.fhir.observations(alone, patient_id="check", device_id="check", now=self.now):
                    check_observation(change.resource)
            except (MappingFailure, *POISON_AT_STORE) as exc:
                found[self.owner[id(m)]] = _error(exc, alone)
        return found

    def _changes(self, group: MeasurementGroup, who: Any, plan: _Plan) -> list[ObservationChange]:
        changes = self.pair.fhir.observations(group, patient_id=who.patient_id, device_id=who.device_id,
                                              encounter_id=who.encounter_id, existing=plan.existing, now=self.now)
        for change in changes:
            check_observation(change.resource)
        return changes

    def _culprits(self, group: MeasurementGroup, who: Any, sources: list[int], plan: _Plan,
                  error: MessageError) -> dict[int, MessageError]:
        """Several messages share the group: map them one by one so only the culprit is parked."""
        if len(sources) == 1:
            return {sources[0]: error}
        found: dict[int, MessageError] = {}
        for i in sources:
            [sub] = group_measurements([m for m in group.measurements if self.owner[id(m)] == i])
            try:
                self._changes(sub, who, plan)
            except (MappingFailure, *POISON_AT_STORE) as exc:
                found[i] = _error(exc, sub)
        return found or dict.fromkeys(sources, error)  # only together do they fail: none goes in

    def _record(self, ms: list[Measurement], group: MeasurementGroup,
                slots: list[tuple[Measurement, tuple[Any, ...]]], plan: _Plan, cross: dict[int, int]) -> None:
        """Which reading holds each (Observation, time) slot, and who was replaced by whom: by a reading
        of the same key and time (the later message's is kept), or by a later message's reading of
        another key merged into the same slot (readings of one hour with and without a patient id)."""
        kept = {id(m) for m in group.measurements}
        at: dict[Any, set[int]] = {}
        for m in group.measurements:
            at.setdefault(m.occurrence_time, set()).add(self.owner[id(m)])
        everyone = {self.owner[id(m)] for m in group.measurements}
        for m in ms:
            if id(m) not in kept:
                by = {cross[id(m)]} if id(m) in cross else at.get(m.occurrence_time, everyone)
                plan.superseded_by.setdefault(self.owner[id(m)], set()).update(by)
        for m, slot in slots:
            owner = self.owner[id(m)]
            earlier = plan.slots.get(slot)
            if earlier is not None and earlier != owner:
                plan.superseded_by.setdefault(earlier, set()).add(owner)
            plan.slots[slot] = owner

    # -- writing (handlers.ingest_writes) ------------------------------------------------------------
    def write(self, plan: _Plan) -> None:
        write_all(self.deps.store, list(plan.writes.values()), self.report, self.park, self.dead)
        self.stored.forget()

    def settle(self, plan: _Plan) -> list[int]:
        """Each message of the pass gets its outcome; those whose replacement was refused on writing
        go round again (their own readings are then written)."""
        again = []
        written = set(plan.slots.values())
        for i in plan.messages:
            if self.dead(i):
                continue
            if any(self.dead(j) for j in plan.superseded_by.get(i, ())):
                again.append(i)
            else:
                self.outcome[i] = WRITTEN if i in written else SUPERSEDED
        return again


def _error(exc: Exception, group: MeasurementGroup) -> MessageError:
    if isinstance(exc, MappingFailure):
        return exc.to_error(type_name=group.type)
    return replace(poison_error(exc, "mapping to FHIR"), type_name=group.type)


def _combine(earlier: ObservationChange, later: ObservationChange) -> ObservationChange:
    """The later change (merged onto the earlier one's resource), written as the earlier one would
    be: a create when the batch created the Observation."""
    if earlier.action == "create":
        return replace(later, action="create")
    return later
