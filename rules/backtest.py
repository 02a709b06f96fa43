"""Backtest: replay stored readings through the evaluator to learn alert volume before go-live.

Each patient's Observations are replayed in effective-time order (as if each arrived when taken),
with the absence/closing sweep run once a day at `sweep_hour` in the patient's time zone and, as
the live 15-minute timer would, at the first tick after each absence gap opens (a reading's time
plus the rule's gap, when no reading came sooner) and at the first tick an open episode may close
(reviewed before each reading). The same evaluator and episode decisions as live are used, so
"alerts" are episodes staff would have seen and "firings" every time a rule held. Disabled rules
(`enabled: false`) are included, because measuring them is the point.

Only the span each patient was enrolled AND sending is replayed and counted in patient-weeks:
from the latest of `since`, the start of their enrollment and their first stored reading, to the
earliest of `until`, the end of their enrollment and the newest reading of the whole cohort (the
end of the stored data). Before a patient's first reading there is nothing to judge, and after
the data ends the store cannot tell a silent patient from data not loaded yet; replaying those
times fired absence rules that no live evaluation over the same data ever fires. A patient who
stops sending while the others go on is still replayed to the end of the data, so their gap is
counted. Pure: the caller loads the readings and times the run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta

from rules.enrollment import PatientContext
from rules.episodes import Episode, apply_decision, decide, review_open_episode
from rules.evaluate import evaluate, sweep
from rules.model import Rule, Ruleset
from rules.readings import Reading
from rules.results import Firing
from rules.window import History


@dataclass(frozen=True)
class PatientData:
    ctx: PatientContext  # `enrolled_since`: the start of enrollment, if known
    readings: Sequence[Reading]
    enrolled_until: datetime | None = None  # the end of enrollment, if it ended


@dataclass
class BacktestReport:
    since: datetime
    until: datetime
    patients: int = 0
    readings: int = 0
    alerts: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (rule, patient, week)
    firings: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    rules: dict[str, str] = field(default_factory=dict)  # rule id -> ruleset
    observed: timedelta = timedelta(0)  # summed over patients: the spans enrolled and sending
    silent: int = 0  # enrolled patients with no reading in the period (not replayed)

    @property
    def patient_weeks(self) -> float:
        return self.observed / timedelta(weeks=1)

    def per_rule(self) -> list[tuple[str, int, int, float]]:
        """(rule id, alerts, firings, alerts per patient-week), busiest first."""
        alerts: Counter[str] = Counter()
        firings: Counter[str] = Counter()
        for (rule, _, _), n in self.alerts.items():
            alerts[rule] += n
        for (rule, _, _), n in self.firings.items():
            firings[rule] += n
        weeks = self.patient_weeks or 1.0
        rows = [(rule, alerts[rule], firings[rule], alerts[rule] / weeks) for rule in self.rules]
        return sorted(rows, key=lambda r: (-r[1], -r[2], r[0]))

    def text(self) -> str:
        silent = f"; {self.silent} enrolled patient(s) sent no reading, not counted" if self.silent else ""
        lines = [f"{self.patients} patients, {self.readings} readings, {self.patient_weeks:.1f} patient-weeks "
                 f"({self.since.date()} to {self.until.date()}; weeks while enrolled and sending{silent})",
                 f"{'rule':<34} {'alerts':>7} {'firings':>8} {'alerts/patient-week':>20}"]
        lines += [f"{rule:<34} {a:>7} {f:>8} {rate:>20.3f}" for rule, a, f, rate in self.per_rule()]
        return "\n".join(lines)


SWEEP_EVERY = timedelta(minutes=15)  # the live alert sweep's timer (triggers/timers.py)


def data_end(patients: Mapping[str, PatientData], until: datetime) -> datetime | None:
    """The newest reading of the cohort at or before `until`: where the stored data ends."""
    return max((r.effective for d in patients.values() for r in d.readings if r.effective <= until), default=None)


def sending_span(data: PatientData, since: datetime, until: datetime,
                 end_of_data: datetime | None) -> tuple[datetime, datetime] | None:
    """The part of [since, until] the patient was enrolled and sending (module docstring), or None."""
    if end_of_data is None:
        return None
    own = [r.effective for r in data.readings if r.effective <= until]
    if not own:
        return None
    first_sent = min(own)
    start = max([since, first_sent, *([data.ctx.enrolled_since] if data.ctx.enrolled_since else [])])
    end = min([until, end_of_data, *([data.enrolled_until] if data.enrolled_until else [])])
    # A patient whose data began before `since` is replayed from `since` (the earlier readings still
    # anchor windows and gaps); one whose first reading is later starts there.
    return (start, end) if start <= end else None


def backtest(rulesets: Sequence[Ruleset], patients: Mapping[str, PatientData], since: datetime, until: datetime,
             *, sweep_hour: int = 9, end_of_data: datetime | None = None) -> BacktestReport:
    """`end_of_data` defaults to the newest reading among `patients` (give it when replaying a
    cohort one patient at a time)."""
    report = BacktestReport(since, until, rules={r.id: rs.ruleset for rs in rulesets for r in rs.rules})
    end = end_of_data if end_of_data is not None else data_end(patients, until)
    for patient_ref, data in patients.items():
        report.patients += 1
        span = sending_span(data, since, until, end)
        if span is None:
            report.silent += 1
            continue
        report.observed += span[1] - span[0]
        _replay_patient(rulesets, patient_ref, data, span[0], span[1], sweep_hour, report)
    return report


def _replay_patient(rulesets: Sequence[Ruleset], patient: str, data: PatientData, since: datetime,
                    until: datetime, sweep_hour: int, report: BacktestReport) -> None:
    readings = [r for r in data.readings if r.effective <= until]
    history = History(readings)
    rules = {rule.id: (rs.ruleset, rule) for rs in rulesets for rule in rs.rules}
    episodes: dict[str, Episode] = {}
    by_ref: dict[str, list[Reading]] = {}
    for reading in readings:
        if reading.effective >= since:
            by_ref.setdefault(reading.ref, []).append(reading)
    events = sorted(by_ref.values(), key=lambda group: (group[0].effective, group[0].ref))
    report.readings += sum(len(group) for group in events)
    sweeps = _sweep_times(since, until, data.ctx, sweep_hour)
    sweeps = sorted({*sweeps, *_gap_sweeps(rulesets, readings, since, until)})
    previous = since
    for trigger in _merge(events, sweeps):
        if isinstance(trigger, datetime):
            now = trigger
            firings = sweep(rulesets, history, data.ctx, now, include_disabled=True)
            _closing(rules, episodes, history, data.ctx, now)
        else:
            now = trigger[0].effective
            # Live, the 15-minute sweep has reviewed open episodes since the previous input: one
            # that stopped holding long enough closed at the first tick that allowed it, so a new
            # firing now is a new alert (and its cool-down counts from that tick).
            _closing_between(rules, episodes, history, data.ctx, previous, now)
            firings = evaluate(rulesets, trigger, history, data.ctx, include_later=False, include_disabled=True)
        previous = now
        for firing in firings:
            _apply(firing.rule, firing, episodes, now, patient, report, data.ctx)


def _merge(events: list[list[Reading]], sweeps: list[datetime]) -> list[list[Reading] | datetime]:
    timeline: list[tuple[datetime, int, list[Reading] | datetime]] = [(e[0].effective, 0, e) for e in events]
    timeline += [(s, 1, s) for s in sweeps]
    return [item for _, _, item in sorted(timeline, key=lambda t: (t[0], t[1]))]


def _sweep_times(since: datetime, until: datetime, ctx: PatientContext, hour: int) -> list[datetime]:
    day, last = since.astimezone(ctx.tz).date(), until.astimezone(ctx.tz).date()
    out = []
    while day <= last:
        at = datetime.combine(day, time(hour), tzinfo=ctx.tz)
        if since <= at <= until:
            out.append(at)
        day += timedelta(days=1)
    return out


def _gap_sweeps(rulesets: Sequence[Ruleset], readings: Sequence[Reading], since: datetime,
                until: datetime) -> set[datetime]:
    """The live sweeps right after each moment an absence gap can open: a reading of a watched
    metric plus the rule's gap, rounded up to the timer's 15-minute grid."""
    gaps = {(m, rule.horizon) for rs in rulesets for rule in rs.rules if rule.has_absence
            for m in rule.absence_metrics}
    out = set()
    for metric, gap in gaps:
        times = sorted({r.effective for r in readings if r.metric == metric})
        # Only where a gap really follows: the next reading came later than `gap`, or never.
        for t, following in zip(times, [*times[1:], None], strict=False):
            if following is None or following - t > gap:
                tick = _next_tick(t + gap)
                if since <= tick <= until:
                    out.add(tick)
    return out


def _last_tick(at: datetime) -> datetime:
    """The latest 15-minute timer tick at or before `at`."""
    step = SWEEP_EVERY.total_seconds()
    return datetime.fromtimestamp((at.timestamp() // step) * step, tz=at.tzinfo)


def _next_tick(at: datetime) -> datetime:
    """The first 15-minute timer tick strictly after `at` (ticks are on the UTC quarter hours)."""
    step = SWEEP_EVERY.total_seconds()
    seconds = at.timestamp()
    return datetime.fromtimestamp((seconds // step + 1) * step, tz=at.tzinfo)


def _closing(rules: dict[str, tuple[str, Rule]], episodes: dict[str, Episode], history: History,
             ctx: PatientContext, now: datetime) -> None:
    for rule_id, episode in list(episodes.items()):
        if episode.is_open:
            ruleset_id, rule = rules[rule_id]
            decision, outcome = review_open_episode(ruleset_id, rule, episode, history, ctx, now)
            if decision.action == "close":
                episodes[rule_id] = apply_decision(decision, outcome, episode, now, episode.patient_ref) or episode


def _closing_between(rules: dict[str, tuple[str, Rule]], episodes: dict[str, Episode], history: History,
                     ctx: PatientContext, after: datetime, until: datetime) -> None:
    """Review each open episode at the live ticks in (after, until] where it can first close: right
    after the previous input (a reading that showed the rule no longer holding), right after
    `resolve_after` has passed since it last held, and the last tick."""
    for rule_id, episode in list(episodes.items()):
        if not episode.is_open:
            continue
        ruleset_id, rule = rules[rule_id]
        earliest = episode.last_held + rule.suppression.resolve_after  # no episode closes sooner
        if earliest > until:
            continue
        candidates = {_next_tick(after), _next_tick(earliest), _last_tick(until)}
        for tick in sorted(t for t in candidates if after < t <= until and t >= earliest):
            decision, outcome = review_open_episode(ruleset_id, rule, episode, history, ctx, tick)
            if decision.action == "close":
                episodes[rule_id] = apply_decision(decision, outcome, episode, tick, episode.patient_ref) or episode
                break


def _apply(rule: Rule, firing: Firing, episodes: dict[str, Episode], now: datetime, patient: str,
           report: BacktestReport, ctx: PatientContext) -> None:
    week = "{}-W{:02d}".format(*firing.at.astimezone(ctx.tz).isocalendar()[:2])
    report.firings[(rule.id, patient, week)] += 1
    episode = episodes.get(rule.id)
    decision = decide(rule, firing, episode, now, patient)
    updated = apply_decision(decision, firing, episode, now, patient)
    if updated is not None:
        episodes[rule.id] = updated
    if decision.action == "open":
        report.alerts[(rule.id, patient, week)] += 1
