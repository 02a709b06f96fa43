"""Server-rendered SVG charts: one per metric, readings as a line, thresholds and goals as dashed
lines, alert openings as markers. No JavaScript library: the page works offline and tests can
assert on the SVG elements (data-* attributes carry the values drawn)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from markupsafe import Markup, escape

from common.codes import METRICS
from rules.fields import GoalBound, ParamRef
from rules.goals import personal_bound
from rules.model import Rule, Ruleset

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 640, 200, 48, 12, 12, 24


@dataclass(frozen=True)
class Line:
    value: float
    label: str  # "systolic_bp >= 180 (rule-id)" / "goal high"
    kind: str  # threshold | goal


def _walk(cond: Any) -> list[Any]:
    """Every single-reading comparison in a condition tree."""
    out: list[Any] = []
    if cond is None:
        return out
    reading = getattr(cond, "reading", None)
    if reading is not None and hasattr(reading, "metric"):
        out.append(reading)
    for attr in ("all", "any"):
        for sub in getattr(cond, attr, None) or []:
            out += _walk(sub)
    if getattr(cond, "not_", None) is not None:
        pass  # a negated bound is not a threshold to draw
    return out


def _value(rule: Rule, spec: Any, goals: list[dict[str, Any]]) -> tuple[float, str] | None:
    if isinstance(spec, ParamRef):
        spec = rule.params.get(spec.param)
    if isinstance(spec, GoalBound):
        bound = personal_bound(goals, spec.goal, spec.bound)
        if bound is not None:
            return bound.value, "goal"
        spec = spec.default
    value = getattr(spec, "value", None)
    return (float(value), "threshold") if value is not None else None


def threshold_lines(rulesets: list[Ruleset], programs: set[str], metric: str,
                    goals: list[dict[str, Any]]) -> list[Line]:
    lines: dict[float, Line] = {}
    for rs in rulesets:
        if rs.program.id not in programs:
            continue
        for rule in rs.rules:
            if not rule.enabled:
                continue
            conds = [rule.when] + [t.when for t in rule.more_severe]
            for comp in (c for cond in conds for c in _walk(cond)):
                if comp.metric != metric:
                    continue
                got = _value(rule, comp.value, goals)
                if got is not None and got[0] not in lines:
                    lines[got[0]] = Line(got[0], f"{metric} {comp.op} {got[0]:g} ({rule.id})", got[1])
    for side in ("low", "high"):
        bound = personal_bound(goals, metric, side)
        if bound is not None and bound.value not in lines:
            lines[bound.value] = Line(bound.value, f"goal {side} {bound.value:g}", "goal")
    return sorted(lines.values(), key=lambda x: x.value)


def svg_chart(metric: str, points: list[tuple[datetime, float]], lines: list[Line], alerts: list[datetime],
              start: datetime, end: datetime) -> Markup:
    values = [v for _, v in points] + [ln.value for ln in lines]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    margin = (hi - lo) * 0.08
    lo, hi = lo - margin, hi + margin
    span = max((end - start).total_seconds(), 1.0)

    def x(t: datetime) -> float:
        return round(PAD_L + (W - PAD_L - PAD_R) * (t - start).total_seconds() / span, 1)

    def y(v: float) -> float:
        return round(PAD_T + (H - PAD_T - PAD_B) * (1 - (v - lo) / (hi - lo)), 1)

    label = METRICS[metric].display if metric in METRICS else metric
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
             f'data-metric="{escape(metric)}" aria-label="{escape(label)}">',
             f'<rect x="{PAD_L}" y="{PAD_T}" width="{W - PAD_L - PAD_R}" height="{H - PAD_T - PAD_B}" class="frame"/>']
    for frac in (0.0, 0.5, 1.0):
        v = lo + (hi - lo) * frac
        parts.append(f'<text x="{PAD_L - 4}" y="{y(v) + 4}" class="axis" text-anchor="end">{v:.0f}</text>')
    day = start.replace(hour=0, minute=0, second=0, microsecond=0)
    step = max(1, round(span / 86400 / 7))
    while day <= end:
        if day >= start:
            parts.append(f'<text x="{x(day)}" y="{H - 6}" class="axis" text-anchor="middle">{day:%m-%d}</text>')
        day += timedelta(days=step)
    for ln in lines:
        parts.append(f'<line class="{ln.kind}" x1="{PAD_L}" x2="{W - PAD_R}" y1="{y(ln.value)}" y2="{y(ln.value)}" '
                     f'data-value="{ln.value:g}"><title>{escape(ln.label)}</title></line>')
    if points:
        path = " ".join(f"{x(t)},{y(v)}" for t, v in points)
        parts.append(f'<polyline class="series" points="{path}" data-count="{len(points)}"/>')
        for t, v in points:
            parts.append(f'<circle class="point" cx="{x(t)}" cy="{y(v)}" r="2.5" data-value="{v:g}"/>')
    for t in alerts:
        if start <= t <= end:
            parts.append(f'<path class="alert-marker" d="M{x(t)},{PAD_T} l-5,-0 l5,9 l5,-9 z" '
                         f'data-at="{t.isoformat()}"><title>alert opened</title></path>')
    if not points:
        parts.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" class="empty">no readings</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
