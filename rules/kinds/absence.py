"""`absence: {metric, within|days}`: no reading of a metric for a period (a data gap). Evaluated by
the alert sweep rather than by new readings, which only end a gap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import model_validator

from rules.conditions import Scope, quick
from rules.fastpath import Check
from rules.fields import MetricName, StrictModel, Windowed, field_error
from rules.registry import Needs
from rules.results import ConditionResult
from rules.window import window_start

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # gap start when a patient never had a reading


class AbsenceSpec(Windowed):
    """No reading of `metric` for a period. The period is a gap length, never calendar days:
    `days: N` means N x 24 h since the last reading, the same as `within: Nd` (docs/rules.md,
    "Windows"). Read as calendar days it would open up to a day late (local midnight N days back)."""

    metric: MetricName

    @model_validator(mode="before")
    @classmethod
    def _gap_length(cls, data: Any) -> Any:
        if isinstance(data, dict) and "days" in data and "within" not in data:
            days = data["days"]
            if isinstance(days, int) and not isinstance(days, bool):
                if days < 1:
                    raise field_error("days", "an absence needs a gap of at least 1 day (or `within`, e.g. 12h)")
                return {k: v for k, v in data.items() if k != "days"} | {"within": timedelta(days=days)}
        return data


class AbsenceCond(StrictModel):
    absence: AbsenceSpec


def evaluate(cond: AbsenceCond, scope: Scope) -> ConditionResult:
    spec = cond.absence
    start = scope.start(spec)
    series = scope.history.series(spec.metric)
    present = series.between(start, scope.at)
    previous = series.last_before(start)
    since = scope.ctx.enrolled_since
    too_new = not present and previous is None and since is not None and since > start
    if not scope.explain:
        return quick(not present and not too_new)
    if present:
        return ConditionResult("absence", False, lambda: f"{len(present)} {spec.metric} reading(s) "
                               f"{scope.window_text(spec)}")
    if too_new:
        return ConditionResult(
            "absence", False, lambda: f"no {spec.metric} reading yet, enrolled for less than the window"
        )
    gap_start = previous.effective if previous else (since or EPOCH)
    last = "no earlier reading" if previous is None else f"last one {_span(scope.at - previous.effective)} earlier"
    return ConditionResult("absence", True, lambda: f"no {spec.metric} reading {scope.window_text(spec)} ({last})",
                           (previous,) if previous else (), gap_start=gap_start)


def _span(delta: timedelta) -> str:
    hours = int(delta.total_seconds() // 3600)
    return f"{hours // 24} day(s) {hours % 24} hour(s)" if hours >= 24 else f"{hours} hour(s)"


def compile(cond: AbsenceCond) -> Check:
    spec = cond.absence
    metric = spec.metric

    def check(scope: Scope) -> bool:
        start = window_start(scope.at, within=spec.within, days=spec.days, tz=scope.ctx.tz)
        series = scope.history.series(metric)
        if series.between(start, scope.at):
            return False
        since = scope.ctx.enrolled_since
        return not (series.last_before(start) is None and since is not None and since > start)

    return check


def needs(cond: AbsenceCond) -> Needs:
    spec = cond.absence
    return Needs(absent=frozenset({spec.metric}), lookback=spec.span())
