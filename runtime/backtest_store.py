"""`vigil rules backtest` over stored history: each enrolled patient's context and readings loaded
from a FHIR store, one patient at a time, replayed by `rules.backtest`, and the report's text."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, TextIO

from common.clock import iso
from fhirstore.errors import ResourceGone, ResourceNotFound
from fhirstore.paging import search_all
from fhirstore.port import FhirStore
from handlers.patient_data import code_query
from rules.backtest import BacktestReport, PatientData, backtest
from rules.enrollment import enrolls, patient_context, patient_timezone, period_bound
from rules.model import Ruleset
from rules.readings import Reading, ReadingError, readings_from_observation

# One calendar day of margin: `days:` windows start at local midnight, up to 14 h before UTC's.
_DAY_MARGIN = timedelta(days=1)


def run_backtest(store: FhirStore, ruleset: Ruleset, since: datetime, until: datetime, *, patient: str | None = None,
                 progress: TextIO | None = None) -> tuple[BacktestReport, list[str]]:
    """Load each enrolled patient's history from `store` and replay it; (report, enrolled patients).

    One patient at a time, so memory stays bounded by the largest patient history."""
    # A bare-date period bound is a day in the patient's zone (rules.enrollment), at most a day
    # from its UTC reading: pick candidates with that margin, then judge each in the patient's zone.
    careplans = [cp for cp in search_all(store, "CarePlan", {"status": "active", "_count": "1000"})
                 if enrolls(cp, ruleset.program) and _overlaps(cp, since - _DAY_MARGIN, until + _DAY_MARGIN, UTC)]
    candidates: dict[str, list[dict[str, Any]]] = {}
    for cp in careplans:
        ref = (cp.get("subject") or {}).get("reference", "")
        if ref.startswith("Patient/") and (patient is None or ref == patient):
            candidates.setdefault(ref, []).append(cp)
    by_patient: dict[str, tuple[dict[str, Any] | None, list[dict[str, Any]]]] = {}
    for ref, plans in candidates.items():
        resource = _patient(store, ref)
        tz = patient_timezone(resource)
        plans = [cp for cp in plans if _overlaps(cp, since, until, tz)]
        if plans:
            by_patient[ref] = (resource, plans)
    total = BacktestReport(since, until, rules={r.id: ruleset.ruleset for r in ruleset.rules})
    end_of_data = stored_data_end(store, ruleset, until)
    skipped = 0
    ignored: Counter[str] = Counter()
    meter = _Progress(progress, len(by_patient))
    for ref in sorted(by_patient):
        resource, plans = by_patient[ref]
        data, unreadable, problems = load_patient_data(store, ruleset, ref, resource, plans, since, until)
        skipped += unreadable
        ignored.update(problems)
        one = backtest([ruleset], {ref: data}, since, until, end_of_data=end_of_data)
        total.patients += one.patients
        total.observed += one.observed
        total.silent += one.silent
        total.readings += one.readings
        total.alerts.update(one.alerts)
        total.firings.update(one.firings)
        meter.step()
    meter.done()
    if skipped and progress is not None:
        print(f"skipped {skipped} Observation(s) that could not be read as readings", file=progress)
    for problem, n in sorted(ignored.items()) if progress is not None else ():
        print(f"care plan override ignored for {n} patient(s), as live: {problem}", file=progress)
    return total, sorted(by_patient)


def stored_data_end(store: FhirStore, ruleset: Ruleset, until: datetime) -> datetime | None:
    """The effective time of the newest stored reading of the ruleset's metrics (any patient) at or
    before `until`: where the data ends, so the replay stops there (rules.backtest)."""
    newest: datetime | None = None
    for metrics, code in _queries(ruleset):
        found = store.search("Observation", {"code": code, "date": f"le{iso(until)}", "_sort": "-date", "_count": "1"})
        for obs in found.resources:
            try:
                times = [r.effective for r in readings_from_observation(obs) if r.metric in metrics]
            except ReadingError:
                continue
            newest = max([*times, *([newest] if newest else [])], default=newest)
    return newest


def load_patient_data(store: FhirStore, ruleset: Ruleset, patient_ref: str, resource: dict[str, Any] | None,
                      careplans: list[dict[str, Any]], since: datetime,
                      until: datetime) -> tuple[PatientData, int, list[str]]:
    """The patient's context and readings for the replay, how many Observations were unreadable, and
    the care-plan overrides that could not be used (they name rules and params, never values).
    `resource` is the Patient (None if not stored): its zone decides a bare-date period bound."""
    # Judge enrollment, overrides and goals as of the end of the period, or of the care plan if sooner.
    tz = patient_timezone(resource)
    ends = [period_bound((cp.get("period") or {}).get("end"), end_of_day=True, tz=tz) for cp in careplans]
    as_of = until if any(e is None for e in ends) else min(until, max(e for e in ends if e is not None))
    goals = search_all(store, "Goal", {"subject": patient_ref, "lifecycle-status": "active"})
    ctx, problems = patient_context(patient_ref, now=as_of, rulesets=[ruleset], patient=resource, careplans=careplans,
                             goals=goals)
    start = since - max((r.horizon for r in ruleset.rules), default=timedelta(0)) - _DAY_MARGIN
    readings: list[Reading] = []
    unreadable = 0
    absence = {m for r in ruleset.rules if r.has_absence for m in r.metrics}
    for metrics, code in _queries(ruleset):
        found = search_all(store, "Observation", {"subject": patient_ref, "code": code,
                                                  "date": [f"ge{iso(start)}", f"le{iso(until)}"], "_count": "1000"})
        if metrics & absence:
            # An absence gap that began before the window is anchored on the newest earlier reading.
            found += store.search("Observation", {"subject": patient_ref, "code": code, "date": f"lt{iso(start)}",
                                                  "_sort": "-date", "_count": "1"}).resources
        for obs in found:
            try:
                readings.extend(r for r in readings_from_observation(obs) if r.metric in metrics)
            except ReadingError:
                unreadable += 1
    # The anchor query and the window query can both return a reading at the window's edge.
    unique = list({(r.ref, r.metric): r for r in readings}.values())
    enrolled_until = None if any(e is None for e in ends) else max(e for e in ends if e is not None)
    return PatientData(ctx, unique, enrolled_until), unreadable, problems


def _queries(ruleset: Ruleset) -> list[tuple[frozenset[str], str]]:
    """One Observation search per metric; metrics stored in the same Observation (a BP panel) share one."""
    by_code: dict[str, set[str]] = {}
    for metric in sorted({m for r in ruleset.rules for m in r.metrics}):
        by_code.setdefault(code_query(metric), set()).add(metric)
    return [(frozenset(metrics), code) for code, metrics in by_code.items()]


def _patient(store: FhirStore, patient_ref: str) -> dict[str, Any] | None:
    try:
        return store.read("Patient", patient_ref.partition("/")[2])
    except (ResourceNotFound, ResourceGone):
        return None


def _overlaps(careplan: dict[str, Any], since: datetime, until: datetime, tz: tzinfo) -> bool:
    period = careplan.get("period") or {}
    start = period_bound(period.get("start"), tz=tz)
    end = period_bound(period.get("end"), end_of_day=True, tz=tz)
    return (start is None or start <= until) and (end is None or end >= since)


def report_text(report: BacktestReport, ruleset: Ruleset) -> str:
    """The report: per-rule totals and rates, then alerts by ISO week (patient's time zone)."""
    lines = [report.text()]
    disabled = [r.id for r in ruleset.rules if not r.enabled]
    if disabled:
        lines.append(f"not live yet (enabled: false), measured anyway: {', '.join(disabled)}")
    if report.alerts:
        by_week: Counter[tuple[str, str]] = Counter()
        patients: dict[tuple[str, str], set[str]] = {}
        for (rule, patient, week), n in report.alerts.items():
            by_week[(week, rule)] += n
            patients.setdefault((week, rule), set()).add(patient)
        lines += ["", "alerts by week", f"{'week':<10} {'rule':<34} {'alerts':>7} {'patients':>9}"]
        lines += [f"{week:<10} {rule:<34} {n:>7} {len(patients[(week, rule)]):>9}"
                  for (week, rule), n in sorted(by_week.items())]
    else:
        lines.append("no alerts would have opened")
    return "\n".join(lines)


class _Progress:
    """Patients done, on stderr: rewritten in place on a terminal, a few lines otherwise."""

    def __init__(self, out: TextIO | None, total: int) -> None:
        self.out, self.total, self.n = out, total, 0
        self.tty = bool(out is not None and getattr(out, "isatty", lambda: False)())
        self.every = max(1, -(-total // 10))  # about ten lines whatever the cohort size

    def step(self) -> None:
        self.n += 1
        if self.out is None:
            return
        if self.tty:
            print(f"\rbacktest: {self.n}/{self.total} patients", end="", file=self.out, flush=True)
        elif self.n % self.every == 0 or self.n == self.total:
            print(f"backtest: {self.n}/{self.total} patients", file=self.out, flush=True)

    def done(self) -> None:
        if self.out is not None and self.tty and self.total:
            print(file=self.out)
