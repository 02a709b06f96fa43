"""The pure evaluator: rules × (triggering readings, the patient's history, their context) → firings.

Inputs (plain data, no I/O):
- `trigger`: the readings of ONE Observation (`readings_from_observation`), all at its effective time;
- `history`: the patient's readings of the metrics the rules use, as a `History` or any iterable of
  `Reading` (the handler loads one query per metric for the longest window); it may include the
  trigger and readings newer than it;
- `ctx`: a `PatientContext` (goals, overrides, time zone, enrollment start).
`data_needed(rulesets)` says which metrics to load and how far back.

Each rule is evaluated as of the trigger's effective time, over readings at or before it: a late
reading is judged as of its own time. If readings newer than the trigger already exist (it arrived
late), rules are also evaluated as of those newer readings' times within the rule's longest window,
because the late reading may complete a pattern there. A rule fires at most once per call.

Fire-on-crossing is the job of `rules.episodes.decide`: a firing carries its triggering reading
references and its episode anchor, so a re-delivered event or an update that changes nothing is
recognised against the open episode and fires nothing new.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from rules.conditions import Scope, evaluate_condition
from rules.enrollment import PatientContext
from rules.fastpath import Check, compiled
from rules.model import SEVERITY_RANK, Rule, Ruleset
from rules.readings import Reading
from rules.results import ConditionResult, Explained, Firing
from rules.window import History

MAX_LATER_POINTS = 100  # bound the work one late reading can cause


@dataclass(frozen=True, slots=True, eq=False)
class _Entry:
    ruleset: str
    rule: Rule
    triggers: frozenset[str]
    has_absence: bool
    horizon: timedelta
    enabled: bool
    position: int
    check: Check


class RuleIndex:
    """Rulesets prepared for evaluation: rules by triggering metric, compiled facts in plain slots.

    Build it once per loaded set of rulesets; `evaluate` also accepts the rulesets themselves and
    keeps a small cache of indexes for them.
    """

    __slots__ = ("entries", "by_metric")

    def __init__(self, rulesets: Sequence[Ruleset]) -> None:
        rules = [(rs.ruleset, rule) for rs in rulesets for rule in rs.rules]
        self.entries = tuple(_Entry(rs_id, rule, rule.trigger_metrics, rule.has_absence, rule.horizon, rule.enabled, i,
                                    compiled(rule)[0]) for i, (rs_id, rule) in enumerate(rules))
        by_metric: dict[str, list[_Entry]] = {}
        for entry in self.entries:
            for metric in entry.triggers:
                by_metric.setdefault(metric, []).append(entry)
        self.by_metric = by_metric

    def for_metrics(self, metrics: Iterable[str]) -> list[_Entry]:
        found: dict[int, _Entry] = {}
        for metric in metrics:
            for entry in self.by_metric.get(metric, ()):
                found[entry.position] = entry
        return [found[i] for i in sorted(found)]


def data_needed(rulesets: Sequence[Ruleset]) -> tuple[frozenset[str], timedelta]:
    """(metrics, lookback): what the handler must load for an evaluation — one query per metric
    for readings taken from `lookback` before the triggering reading up to now (newer readings let
    a late reading complete a pattern). Absence rules also need
    the newest reading of their metric even if older (one `_sort=-date&_count=1` query): it marks
    where the gap began, and without it each sweep would see a different gap."""
    rules = [rule for rs in rulesets for rule in rs.rules]
    return (frozenset(m for rule in rules for m in rule.metrics),
            max((rule.horizon for rule in rules), default=timedelta(0)))


_INDEXES: dict[tuple[int, ...], tuple[Sequence[Ruleset], RuleIndex]] = {}


def rule_index(rulesets: Sequence[Ruleset] | RuleIndex) -> RuleIndex:
    if isinstance(rulesets, RuleIndex):
        return rulesets
    key = tuple(id(rs) for rs in rulesets)
    cached = _INDEXES.get(key)
    if cached is None:
        if len(_INDEXES) >= 64:
            _INDEXES.clear()
        # The rulesets are kept with their index so their ids cannot be reused by other objects.
        cached = _INDEXES[key] = (tuple(rulesets), RuleIndex(rulesets))
    return cached[1]


def _usable(entry: _Entry, ctx: PatientContext, include_disabled: bool) -> bool:
    override = ctx.overrides.get(entry.rule.id) if ctx.overrides else None
    return (entry.enabled or include_disabled) and not (override is not None and override.disabled)


def evaluate(rulesets: Sequence[Ruleset] | RuleIndex, trigger: Sequence[Reading], history: History | Iterable[Reading],
             ctx: PatientContext, *, include_later: bool = True, include_disabled: bool = False) -> list[Firing]:
    """Firings for one triggering Observation (see the module docstring for the inputs)."""
    if not trigger:
        return []
    if len({r.ref for r in trigger}) != 1 or len({r.effective for r in trigger}) != 1:
        raise ValueError("the trigger must be the readings of one Observation (one reference, one time)")
    history = history.with_latest(trigger) if isinstance(history, History) else History(history, trigger)
    at = trigger[0].effective
    trigger = tuple(trigger)
    include_later = include_later and history.latest is not None and history.latest > at  # a late reading
    entries = rule_index(rulesets).for_metrics({r.metric for r in trigger})
    if not entries:
        return []
    scope = Scope(entries[0].rule, at, {r.metric: r for r in trigger}, history, ctx, None, explain=False)
    overrides = ctx.overrides
    firings = []
    for entry in entries:
        override = overrides.get(entry.rule.id) if overrides else None
        if (not entry.enabled and not include_disabled) or (override is not None and override.disabled):
            continue
        scope.use(entry.rule, override)
        # The compiled check answers most rules; only a rule that holds goes on to a Firing.
        firing = _fire(entry.ruleset, entry.rule, scope, trigger) if entry.check(scope) else None
        if firing is None and include_later:
            firing = _at_later_readings(entry, at, history, ctx)
        if firing is not None:
            firings.append(firing)
    return firings


def sweep(rulesets: Sequence[Ruleset] | RuleIndex, history: History | Iterable[Reading], ctx: PatientContext,
          now: datetime, *, include_disabled: bool = False) -> list[Firing]:
    """Firings of the rules with an absence condition, evaluated at `now` (the timer sweep).
    `history` must hold each absence metric's newest reading, however old (see `data_needed`)."""
    history = history if isinstance(history, History) else History(history)
    entries = [e for e in rule_index(rulesets).entries if e.has_absence and _usable(e, ctx, include_disabled)]
    return [f for e in entries for f in [evaluate_rule(e.ruleset, e.rule, now, (), history, ctx)] if f is not None]


def latest_outcome(ruleset_id: str, rule: Rule, history: History | Iterable[Reading], ctx: PatientContext,
                   now: datetime) -> Firing | None:
    """Does `rule` still hold on the latest data? For closing episodes: an absence rule is judged at
    `now`; any other rule as of its newest triggering reading, so no new reading means no change."""
    history = history if isinstance(history, History) else History(history)
    if rule.has_absence and not rule.trigger_metrics:
        return evaluate_rule(ruleset_id, rule, now, (), history, ctx)
    latest = [s.up_to(now, 1) for s in (history.series(m) for m in rule.trigger_metrics)]
    newest = max((r[-1] for r in latest if r), key=lambda r: (r.effective, r.ref), default=None)
    if newest is None:
        return None
    return evaluate_rule(ruleset_id, rule, newest.effective, _observation(history, rule, newest), history, ctx)


def evaluate_rule(ruleset_id: str, rule: Rule, at: datetime, trigger: tuple[Reading, ...], history: History,
                  ctx: PatientContext, *, late: bool = False, scope: Scope | None = None) -> Firing | None:
    """One rule as of `at`: a compiled yes/no check first, the explained evaluation only if it holds.
    `scope` lets one event reuse a scope (same time, trigger, history, patient) across its rules."""
    override = ctx.overrides.get(rule.id) if ctx.overrides else None
    if scope is None:
        scope = Scope(rule, at, {r.metric: r for r in trigger}, history, ctx, override, explain=False)
    else:
        scope.use(rule, override)
    return _fire(ruleset_id, rule, scope, trigger, late=late) if compiled(rule)[0](scope) else None


def _fire(ruleset_id: str, rule: Rule, scope: Scope, trigger: tuple[Reading, ...], *, late: bool = False) -> Firing:
    """The Firing of a rule whose check held in `scope`; its explanation is built on first use."""
    at, history, ctx, override = scope.at, scope.history, scope.ctx, scope.override
    tier_checks = compiled(rule)[1]
    severity, tier_condition = rule.severity, None
    for candidate, tier_check in zip(rule.more_severe, tier_checks, strict=True):
        if SEVERITY_RANK[candidate.severity] > SEVERITY_RANK[severity] and tier_check(scope):
            severity, tier_condition = candidate.severity, candidate.when
    by_metric = scope.trigger

    def explain() -> Explained:
        fresh = Scope(rule, at, by_metric, history, ctx, override)
        result = evaluate_condition(rule.when, fresh)
        tier = evaluate_condition(tier_condition, fresh) if tier_condition is not None else None
        return result, tier, fresh.notes()

    firing = Firing(ruleset_id, rule, severity, at, trigger, at, explain, late)
    if not trigger:
        firing.anchor = _gap_start(firing.result) or at  # a sweep's episode starts where the gap began
    return firing


def _at_later_readings(entry: _Entry, at: datetime, history: History, ctx: PatientContext) -> Firing | None:
    until = at + entry.horizon
    later = sorted(
        {(r.effective, r.ref): r for m in entry.triggers for r in history.series(m).after(at, until)}.items()
    )
    for _, reading in later[:MAX_LATER_POINTS]:
        firing = evaluate_rule(entry.ruleset, entry.rule, reading.effective, _observation(history, entry.rule, reading),
                               history, ctx, late=True)
        if firing is not None:
            return firing
    return None


def _observation(history: History, rule: Rule, reading: Reading) -> tuple[Reading, ...]:
    """All readings of the Observation `reading` came from (a BP panel gives two)."""
    same = [r for m in rule.trigger_metrics | {reading.metric}
            for r in history.series(m).between(reading.effective, reading.effective) if r.ref == reading.ref]
    return tuple(sorted(same, key=lambda r: r.metric))


def _gap_start(result: ConditionResult) -> datetime | None:
    for leaf in result.contributing():
        if leaf.gap_start is not None:
            return leaf.gap_start
    return None
