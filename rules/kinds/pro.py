"""`pro: {instrument, item?, op/value | band_at_least}`: a patient-reported outcome score (PHQ-9,
PHQ-2, GAD-7 total or item, or its severity band) of the triggering QuestionnaireResponse."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from common.codes import METRICS
from rules.conditions import NOT_HELD, Scope, compare
from rules.fastpath import Check, predicate
from rules.fields import Op, StrictModel, field_error
from rules.pro import INSTRUMENTS
from rules.registry import Needs
from rules.results import ConditionResult, ResolvedThreshold


class ProSpec(StrictModel):
    instrument: Literal["phq9", "phq2", "gad7"]
    item: int | None = Field(default=None, ge=1)
    op: Op | None = None
    value: float | None = None
    band_at_least: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> ProSpec:
        inst = INSTRUMENTS[self.instrument]
        if self.band_at_least is not None:
            if self.item is not None or self.op is not None:
                raise field_error("band_at_least", "use either band_at_least or op/value, not both")
            if self.band_at_least not in inst.band_names:
                raise field_error("band_at_least", f"unknown {inst.name} band {self.band_at_least!r}; "
                                  f"valid: {', '.join(inst.band_names)}")
        elif self.op is None or self.value is None:
            raise field_error("op", "give op and value (on the total, or on `item`), or band_at_least")
        if self.item is not None and self.item > len(inst.item_metrics):
            detail = (f"{inst.name} has {len(inst.item_metrics)} scored items" if inst.item_metrics
                      else f"{inst.name} item answers are not kept as readings; use instrument phq9")
            raise field_error("item", detail)
        return self

    @property
    def metric(self) -> str:
        return f"{self.instrument}_item{self.item}" if self.item else f"{self.instrument}_total"


class ProCond(StrictModel):
    pro: ProSpec


def _band_floor(spec: ProSpec) -> float:
    inst = INSTRUMENTS[spec.instrument]
    return dict((name, low) for low, name in inst.bands)[spec.band_at_least or ""]


def evaluate(cond: ProCond, scope: Scope) -> ConditionResult:
    spec = cond.pro
    inst = INSTRUMENTS[spec.instrument]
    reading = scope.trigger.get(spec.metric)
    what = f"{inst.name} item {spec.item}" if spec.item else f"{inst.name} total"
    if reading is None:
        why = "not answered" if spec.item else "not scored (incomplete response)"
        return ConditionResult("pro", False, lambda: f"{what} {why} in the triggering observation") \
            if scope.explain else NOT_HELD
    if spec.band_at_least is not None:
        band = inst.band(reading.value)
        low = _band_floor(spec)
        held = inst.band_names.index(band) >= inst.band_names.index(spec.band_at_least)
        threshold = ResolvedThreshold("band_at_least", spec.metric, float(low), METRICS[spec.metric].unit, "rule",
                                      f"band {spec.band_at_least} starts at {low}")
        return ConditionResult("pro", held, lambda: f"{what} {reading.value:g} is in band {band}; band at least "
                               f"{spec.band_at_least} (from {low})", (reading,), (threshold,))
    assert spec.op is not None and spec.value is not None
    threshold = ResolvedThreshold("value", spec.metric, spec.value, METRICS[spec.metric].unit, "rule",
                                  f"rule value {spec.value:g}")
    held = compare(spec.op, reading.value, spec.value)
    return ConditionResult("pro", held, lambda: f"{what} {reading.value:g} {spec.op} {spec.value:g}", (reading,),
                           (threshold,))


def compile(cond: ProCond) -> Check:
    spec = cond.pro
    metric = spec.metric
    if spec.band_at_least is not None:
        lowest = _band_floor(spec)
        return lambda scope: (r := scope.trigger.get(metric)) is not None and r.value >= lowest
    assert spec.op is not None and spec.value is not None
    pred = predicate(spec.op, spec.value)
    return lambda scope: (r := scope.trigger.get(metric)) is not None and pred(r.value)


def needs(cond: ProCond) -> Needs:
    return Needs(metrics=frozenset({cond.pro.metric}))
