"""Care-manager test cases: given readings, goals and a clock, these alerts (or none) open.

A test file names its ruleset and lists cases (docs/rules.md shows the format). Readings are
replayed in the order listed, which is their ARRIVAL order: a reading listed after a later one
arrives late. Each arrival is evaluated like a live event against everything that arrived so far,
and the episode decisions are applied, so `expect` lists the alerts staff would see: opened
episodes, not every repeat firing. `sweeps` run the absence/closing timer at the given times.

Pure: `run_suite(suite, ruleset)` takes parsed data; `rules.loader.load_test_suite` reads files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, field_validator, model_validator

from common.clock import parse_instant
from common.codes import LOINC, METRICS, UCUM
from rules.enrollment import PatientContext, RuleOverride
from rules.episodes import Decision, Episode, apply_decision, decide, review_open_episode
from rules.evaluate import evaluate, sweep
from rules.fields import MetricName, QuantityValue, StrictModel, field_error
from rules.model import Ruleset
from rules.pro import INSTRUMENTS, LL358_3, score_observation, score_response
from rules.quantity import Quantity
from rules.readings import Reading, readings_from_observation
from rules.results import Firing

PATIENT = "Patient/test-case"
_ANSWER_CODES = {weight: code for code, weight in LL358_3.items()}


def _instant(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    try:
        return parse_instant(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a date-time with a UTC offset, e.g. 2025-03-02T07:00:00-06:00") from None


class ReadingEntry(StrictModel):
    """`{at: ..., body_weight: 81.2}`; several metrics make one Observation (a BP panel);
    `phq9: [0, 1, ...]` answers a questionnaire (null = unanswered)."""

    at: datetime
    arrives: datetime | None = None
    id: str | None = None
    values: dict[MetricName, QuantityValue] = {}
    answers: dict[Literal["phq9", "phq2", "gad7"], list[int | None]] = {}

    @model_validator(mode="before")
    @classmethod
    def _split(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fixed = {"at", "arrives", "id", "values", "answers"}
        out = {k: v for k, v in data.items() if k in fixed}
        out["values"] = {k: v for k, v in data.items() if k not in fixed and k not in INSTRUMENTS}
        out["answers"] = {k: v for k, v in data.items() if k in INSTRUMENTS}
        return out

    @field_validator("at", "arrives", mode="before")
    @classmethod
    def _times(cls, value: Any) -> Any:
        return None if value is None else _instant(value)

    @model_validator(mode="after")
    def _something(self) -> ReadingEntry:
        if not self.values and not self.answers:
            raise field_error("at", "a reading needs at least one metric value (e.g. body_weight: 81.2) or answers")
        for instrument, answers in self.answers.items():
            if len(answers) != len(INSTRUMENTS[instrument].items):
                raise field_error(
                    instrument, f"{INSTRUMENTS[instrument].name} has {len(INSTRUMENTS[instrument].items)} items"
                )
        return self


class GoalEntry(StrictModel):
    metric: MetricName
    high: QuantityValue | None = None
    low: QuantityValue | None = None
    comparator: Literal["<", "<=", ">", ">="] | None = None
    status: str = "active"


class OverrideEntry(StrictModel):
    disabled: bool = False
    params: dict[str, QuantityValue] = {}


class ExpectedAlert(StrictModel):
    rule: str
    at: datetime | None = None  # effective time of the reading that opened it
    severity: Literal["low", "moderate", "high"] | None = None
    text: str | None = None  # must appear in the explanation

    @field_validator("at", mode="before")
    @classmethod
    def _time(cls, value: Any) -> Any:
        return None if value is None else _instant(value)


class TestCase(StrictModel):
    name: str
    timezone: str | None = None
    enrolled_since: datetime | None = None
    goals: list[GoalEntry | dict[str, Any]] = []
    overrides: dict[str, OverrideEntry] = {}
    readings: list[ReadingEntry] = []
    sweeps: list[datetime] = []
    expect: list[ExpectedAlert] = Field(default_factory=list)

    @field_validator("enrolled_since", mode="before")
    @classmethod
    def _since(cls, value: Any) -> Any:
        return None if value is None else _instant(value)

    @field_validator("sweeps", mode="before")
    @classmethod
    def _sweep_times(cls, value: Any) -> Any:
        return [_instant(x) for x in value] if isinstance(value, list) else value


class TestSuite(StrictModel):
    ruleset: str  # path of the ruleset file, relative to the test file
    timezone: str = "UTC"
    cases: list[TestCase] = Field(min_length=1)


@dataclass(frozen=True)
class Alert:
    rule: str
    at: datetime
    severity: str
    explanation: str


@dataclass
class CaseResult:
    name: str
    passed: bool
    alerts: list[Alert]
    problems: list[str] = field(default_factory=list)


def run_suite(suite: TestSuite, ruleset: Ruleset) -> list[CaseResult]:
    return [run_case(case, ruleset, suite.timezone) for case in suite.cases]


def run_case(case: TestCase, ruleset: Ruleset, default_tz: str = "UTC") -> CaseResult:
    try:
        ctx = _context(case, ruleset, default_tz)
    except ValueError as exc:
        return CaseResult(case.name, False, [], [str(exc)])
    replay = _Replay(ruleset, ctx)
    for i, entry in enumerate(case.readings):
        replay.arrive(_trigger(entry, i), entry.arrives)
    for at in case.sweeps:
        replay.sweep(at)
    problems = _compare(case.expect, replay.alerts)
    return CaseResult(case.name, not problems, replay.alerts, problems)


class _Replay:
    def __init__(self, ruleset: Ruleset, ctx: PatientContext) -> None:
        self.ruleset, self.ctx = ruleset, ctx
        self.known: list[Reading] = []
        self.episodes: dict[str, Episode] = {}
        self.alerts: list[Alert] = []
        self.clock: datetime | None = None

    def arrive(self, trigger: list[Reading], arrives: datetime | None) -> None:
        if not trigger:
            return
        self.known += trigger
        self.clock = max(filter(None, (self.clock, arrives, trigger[0].effective)))
        for firing in evaluate([self.ruleset], trigger, self.known, self.ctx):
            self._apply(firing.rule_id, firing)

    def sweep(self, now: datetime) -> None:
        self.clock = max(filter(None, (self.clock, now)))
        for firing in sweep([self.ruleset], self.known, self.ctx, now):
            self._apply(firing.rule_id, firing)
        for rule_id, episode in list(self.episodes.items()):
            if episode.is_open:
                decision, outcome = review_open_episode(self.ruleset.ruleset, self.ruleset.rule(rule_id), episode,
                                                        self.known, self.ctx, now)
                self._record(rule_id, decision, outcome)

    def _apply(self, rule_id: str, firing: Firing | None) -> None:
        assert self.clock is not None
        self._record(rule_id, decide(self.ruleset.rule(rule_id), firing, self.episodes.get(rule_id), self.clock,
                                     PATIENT), firing)

    def _record(self, rule_id: str, decision: Decision, firing: Firing | None) -> None:
        assert self.clock is not None
        updated = apply_decision(decision, firing, self.episodes.get(rule_id), self.clock, PATIENT)
        if updated is not None:
            self.episodes[rule_id] = updated
        if decision.action == "open" and firing is not None:
            self.alerts.append(Alert(rule_id, firing.at, firing.severity, firing.explanation()))


def _context(case: TestCase, ruleset: Ruleset, default_tz: str) -> PatientContext:
    goals = tuple(g if isinstance(g, dict) else goal_resource(g, i) for i, g in enumerate(case.goals))
    overrides = {}
    for rule_id, entry in case.overrides.items():
        try:
            rule = ruleset.rule(rule_id)
        except KeyError:
            raise ValueError(f"overrides: unknown rule {rule_id!r} in ruleset {ruleset.ruleset}") from None
        unknown = set(entry.params) - set(rule.params)
        if unknown:
            raise ValueError(f"overrides.{rule_id}: unknown param(s) {', '.join(sorted(unknown))}; "
                             f"valid: {', '.join(sorted(rule.params)) or 'none'}")
        overrides[rule_id] = RuleOverride(entry.disabled, dict(entry.params))
    return PatientContext(PATIENT, goals, overrides, ZoneInfo(case.timezone or default_tz), case.enrolled_since)


def goal_resource(entry: GoalEntry, index: int = 0) -> dict[str, Any]:
    """A FHIR Goal for a test case's short goal form."""
    metric = METRICS[entry.metric]

    def quantity(q: Quantity) -> dict[str, Any]:
        return {"value": q.value, "system": UCUM, "code": q.unit or metric.unit}

    target: dict[str, Any] = {"measure": {"coding": [{"system": LOINC, "code": metric.loinc}]}}
    if entry.comparator:
        bound = entry.high or entry.low
        if bound is None:
            raise ValueError("a goal with a comparator needs high or low")
        target["detailQuantity"] = {**quantity(bound), "comparator": entry.comparator}
    else:
        target["detailRange"] = {k: quantity(q) for k, q in (("low", entry.low), ("high", entry.high)) if q}
    return {"resourceType": "Goal", "id": f"test-goal-{index}", "lifecycleStatus": entry.status,
            "description": {"text": "test goal"}, "subject": {"reference": PATIENT}, "target": [target]}


def _trigger(entry: ReadingEntry, index: int) -> list[Reading]:
    ref = f"Observation/{entry.id or f'reading-{index}'}"
    out = [Reading(metric, q.in_unit(METRICS[metric].unit), entry.at, ref, q.value, q.unit or METRICS[metric].unit)
           for metric, q in entry.values.items()]
    for instrument, answers in entry.answers.items():
        out += _scored(instrument, answers, entry, index)
    return out


def _scored(instrument: str, answers: list[int | None], entry: ReadingEntry, index: int) -> list[Reading]:
    inst = INSTRUMENTS[instrument]
    items = [{"linkId": f"/{code}", "answer": [{"valueCoding": {"system": LOINC, "code": _ANSWER_CODES[a]}}]}
             for code, a in zip(inst.items, answers, strict=True) if a is not None]
    response = {"resourceType": "QuestionnaireResponse", "id": entry.id or f"response-{index}", "status": "completed",
                "questionnaire": f"http://loinc.org/q/{inst.panel}", "subject": {"reference": PATIENT},
                "authored": entry.at.isoformat(), "item": items}
    return readings_from_observation(score_observation(score_response(response), response))


def _compare(expected: list[ExpectedAlert], actual: list[Alert]) -> list[str]:
    problems = []
    unmatched = list(actual)
    for want in expected:
        match = next((a for a in unmatched if _matches(want, a)), None)
        if match is None:
            problems.append(f"expected an alert of rule {want.rule}" + (f" at {want.at.isoformat()}" if want.at else "")
                            + " but none opened")
        else:
            unmatched.remove(match)
    problems += [f"unexpected alert of rule {a.rule} at {a.at.isoformat()}: {a.explanation}" for a in unmatched]
    return problems


def _matches(want: ExpectedAlert, alert: Alert) -> bool:
    return (want.rule == alert.rule and (want.at is None or want.at == alert.at)
            and (want.severity is None or want.severity == alert.severity)
            and (want.text is None or want.text in alert.explanation))


def results_text(results: list[CaseResult], source: str = "") -> str:
    """What `vigil rules test FILE` prints: one line per case, the reasons under a failure."""
    lines = [f"{'PASS' if r.passed else 'FAIL'}  {r.name}" + "".join(f"\n      {p}" for p in r.problems)
             for r in results]
    failed = sum(not r.passed for r in results)
    lines.append(f"{source + ': ' if source else ''}{len(results) - failed} passed, {failed} failed")
    return "\n".join(lines)
