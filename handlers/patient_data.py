"""Load what rule evaluation needs for one patient: enrollment, goals, and readings by metric.

One query per metric (DESIGN §6), bounded by the rules' lookback; every window is by effective
time, so the query is on `date` (effective), never on arrival.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from common.clock import iso
from common.codes import LOINC
from fhirstore.batch_reads import Read, read_together
from fhirstore.paging import search_all
from fhirstore.port import FhirStore, ReadingsWindows
from fhirstore.readings_index import metric_codes
from handlers.enrollment_cache import Enrollment, EnrollmentCache
from rules.enrollment import (
    PatientContext,
    careplan_active,
    enrolled_rulesets,
    patient_context,
    patient_timezone,
    unknown_programs,
)
from rules.evaluate import data_needed
from rules.model import Ruleset
from rules.readings import Reading, ReadingError, readings_from_observation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PatientRules:
    """The rulesets a patient is enrolled in, and the context to evaluate them with."""

    rulesets: list[Ruleset]
    context: PatientContext
    patient: dict[str, Any] | None = None  # the Patient read with the enrollment (None: the store has none)


def load_enrollment(store: FhirStore, patient_ref: str) -> Enrollment:
    """The patient's active CarePlans, the Patient (None when gone) and active Goals, from the store:
    read fresh each time, in one round trip on a store that batches reads (fhirstore.batch_reads)."""
    careplans, patient, goals = read_together(store, [
        Read("CarePlan", params={"subject": patient_ref, "status": "active"}),
        Read("Patient", patient_ref.partition("/")[2]),
        Read("Goal", params={"subject": patient_ref, "lifecycle-status": "active"}),
    ])
    assert isinstance(careplans, list) and isinstance(goals, list) and not isinstance(patient, list)
    return Enrollment(careplans, patient, goals, {})


def load_patient_rules(store: FhirStore, patient_ref: str, rulesets: list[Ruleset], now: datetime, *,
                       default_tz: str = "UTC", cache: EnrollmentCache | None = None) -> PatientRules | None:
    """None when the patient is not enrolled in any program (no active CarePlan naming one).
    `default_tz` is the zone of a patient who records none: the same default their messages use.
    With `cache`, the CarePlans, Patient and Goals come from it while the store says they are current."""
    if cache is None:
        found, warnings = _patient_rules(patient_ref, load_enrollment(store, patient_ref), rulesets, now, default_tz)
    else:
        enrollment = cache.get(store, patient_ref, lambda: load_enrollment(store, patient_ref))
        # The result depends on `now` only through which CarePlans are active then: computed once
        # per set of active CarePlans (for these rulesets and default zone) of the cached entry.
        tz = patient_timezone(enrollment.patient, default_tz)
        key = (default_tz, tuple(careplan_active(cp, now, tz) for cp in enrollment.careplans))
        memo = enrollment.memo.get(key)
        if memo is None or memo[0] is not rulesets:
            memo = enrollment.memo[key] = (rulesets,
                                           *_patient_rules(patient_ref, enrollment, rulesets, now, default_tz))
        found, warnings = memo[1], memo[2]
    for warning in warnings:
        log.warning(*warning)
    return found


def _patient_rules(patient_ref: str, enrollment: Enrollment, rulesets: list[Ruleset], now: datetime,
                   default_tz: str) -> tuple[PatientRules | None, list[tuple[Any, ...]]]:
    careplans, patient, goals = enrollment.careplans, enrollment.patient, enrollment.goals
    tz = patient_timezone(patient, default_tz)  # a bare-date CarePlan period is the patient's day
    enrolled = enrolled_rulesets(careplans, rulesets, now, tz)
    if not enrolled:
        unknown = sum(len(unknown_programs(cp, (rs.program for rs in rulesets))) for cp in careplans
                      if careplan_active(cp, now, tz))
        # Not silence: the CarePlan's own event was dead-lettered (unknown_program); say it again
        # here, for CarePlans written before that check. No program ids: they name the condition.
        return None, [("a patient's active CarePlan names %d unknown program id(s); not enrolled", unknown)] \
            if unknown else []
    context, problems = patient_context(patient_ref, now=now, rulesets=enrolled, patient=patient,
                                        careplans=careplans, goals=goals, default_tz=default_tz)
    # Problems name the rule and the override field, never values.
    warnings = [("care plan override ignored: %s", problem) for problem in problems]
    return PatientRules(enrolled, context, patient), warnings


def code_query(metric: str) -> str:
    """The Observation `code` search value that finds `metric`: each LOINC code it is stored under."""
    return ",".join(f"{LOINC}|{c}" for c in metric_codes(metric))


def load_readings(store: FhirStore, patient_ref: str, metrics: frozenset[str] | set[str],
                  since: datetime) -> list[Reading]:
    """Readings of `metrics` for the patient with effective time from `since` on. The embedded
    store answers from its readings index (fhirstore.readings_index: the same readings, no JSON
    decoded); any other store by one search per code list."""
    if isinstance(store, ReadingsWindows):
        window: list[Reading] = store.readings_window(patient_ref, metrics, iso(since))
        return window
    by_query: dict[str, set[str]] = {}
    for metric in metrics:
        by_query.setdefault(code_query(metric), set()).add(metric)
    out: list[Reading] = []
    for code, wanted in by_query.items():
        for obs in search_all(store, "Observation", {"subject": patient_ref, "code": code, "date": f"ge{iso(since)}",
                                                      "_count": "1000"}):
            out.extend(r for r in _readings(obs) if r.metric in wanted)
    return out


def newest_readings(store: FhirStore, patient_ref: str, metrics: set[str]) -> list[Reading]:
    """The newest reading of each metric, however old (absence rules anchor their gap on it)."""
    out: list[Reading] = []
    for metric in metrics:
        found = store.search("Observation", {"subject": patient_ref, "code": code_query(metric),
                                             "_sort": "-date", "_count": "1"})
        for obs in found.resources:
            out.extend(r for r in _readings(obs) if r.metric == metric)
    return out


def first_readings_after(store: FhirStore, patient_ref: str, metrics: set[str] | frozenset[str],
                         after: datetime) -> list[Reading]:
    """The first reading of each metric with effective time after `after`, however far back: when a
    gap in the data ended (an absence episode resolves from then, even once the window moved on)."""
    out: list[Reading] = []
    for metric in metrics:
        found = store.search("Observation", {"subject": patient_ref, "code": code_query(metric),
                                             "date": f"gt{iso(after)}", "_sort": "date", "_count": "1"})
        for obs in found.resources:
            out.extend(r for r in _readings(obs) if r.metric == metric)
    return out


def history_window(rulesets: list[Ruleset], at: datetime,
                   trigger_metrics: frozenset[str] | None = None) -> tuple[frozenset[str], datetime]:
    """The metrics to load and from when. With `trigger_metrics`, only for the rules those metrics
    can trigger: a heart-rate reading does not need the weight history."""
    if trigger_metrics is None:
        metrics, lookback = data_needed(rulesets)
    else:
        metrics, lookback = _triggered_needs(rulesets, trigger_metrics)
    # A day of margin: calendar-day windows start at local midnight, up to 14 h before UTC's.
    return metrics, at - lookback - timedelta(days=1)


# What the rules a set of metrics triggers need, per (rulesets, metrics): the same few combinations
# come back with every reading. Keyed by the rulesets' identities and checked against them, so a
# reloaded ruleset is never answered for; cleared when it grows past a bound.
_NEEDS: dict[tuple[Any, ...], tuple[tuple[Ruleset, ...], frozenset[str], timedelta]] = {}


def _triggered_needs(rulesets: list[Ruleset], trigger_metrics: frozenset[str]) -> tuple[frozenset[str], timedelta]:
    key = (*map(id, rulesets), trigger_metrics)
    found = _NEEDS.get(key)
    if found is not None and len(found[0]) == len(rulesets) and all(
            a is b for a, b in zip(found[0], rulesets, strict=True)):
        return found[1], found[2]
    rules = [r for rs in rulesets for r in rs.rules if r.trigger_metrics & trigger_metrics]
    metrics = frozenset(m for r in rules for m in r.metrics)
    lookback = max((r.horizon for r in rules), default=timedelta(0))
    if len(_NEEDS) > 4096:
        _NEEDS.clear()
    _NEEDS[key] = (tuple(rulesets), metrics, lookback)
    return metrics, lookback


def _readings(obs: dict[str, Any]) -> list[Reading]:
    try:
        return readings_from_observation(obs)
    except ReadingError:
        # One unreadable Observation must not block the rest of the window. The error text can
        # quote a date of service, so only the id goes to the log.
        log.warning("Observation/%s skipped in the window: unreadable", obs.get("id"))
        return []
