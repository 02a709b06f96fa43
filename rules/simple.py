"""The foundation's single-threshold rule: a stand-in until the full rule language lands.

A rule compares one metric of the triggering reading with a fixed threshold. Evaluation is pure.
This module is deliberately small; the rules issue replaces it with rulesets, windows, goals and
episodes.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from common.codes import METRIC_BY_LOINC, METRICS, UCUM
from common.units import UnitError, convert

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
}
SEVERITIES = ("high", "moderate", "low")


class RuleError(ValueError):
    """A rule file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class ThresholdRule:
    id: str
    title: str
    metric: str
    op: str
    threshold: float
    severity: str
    notify: tuple[str, ...]  # recipients: "patient", "care-team"

    def holds(self, value: float) -> bool:
        return _OPS[self.op](value, self.threshold)


@dataclass(frozen=True)
class Firing:
    rule: ThresholdRule
    value: float
    unit: str
    explanation: str


def load_rules(path: str | Path) -> list[ThresholdRule]:
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RuleError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list):
        raise RuleError(f"{path}: expected a mapping with a 'rules' list")
    rules = []
    for i, raw in enumerate(doc["rules"]):
        where = f"{path}: rules[{i}]"
        if not isinstance(raw, dict):
            raise RuleError(f"{where}: expected a mapping")
        for key in ("id", "metric", "op", "value", "severity"):
            if key not in raw:
                raise RuleError(f"{where}: missing field '{key}'")
        if raw["metric"] not in METRICS:
            raise RuleError(f"{where}.metric: unknown metric {raw['metric']!r}; valid: {', '.join(sorted(METRICS))}")
        if raw["op"] not in _OPS:
            raise RuleError(f"{where}.op: {raw['op']!r} is not one of {', '.join(_OPS)}")
        if raw["severity"] not in SEVERITIES:
            raise RuleError(f"{where}.severity: {raw['severity']!r} is not one of {', '.join(SEVERITIES)}")
        if isinstance(raw["value"], bool) or not isinstance(raw["value"], int | float):
            raise RuleError(f"{where}.value: must be a number in {METRICS[raw['metric']].unit}")
        rules.append(
            ThresholdRule(
                id=str(raw["id"]),
                title=str(raw.get("title", raw["id"])),
                metric=raw["metric"],
                op=raw["op"],
                threshold=float(raw["value"]),
                severity=raw["severity"],
                notify=tuple(raw.get("notify", ["care-team"])),
            )
        )
    ids = [r.id for r in rules]
    if len(set(ids)) != len(ids):
        raise RuleError(f"{path}: rule ids must be unique")
    return rules


def readings(observation: dict[str, Any]) -> dict[str, tuple[float, str]]:
    """metric alias -> (value in the canonical unit, unit) for every known quantity in an Observation."""
    out: dict[str, tuple[float, str]] = {}
    parts = [observation, *observation.get("component", [])]
    for part in parts:
        quantity = part.get("valueQuantity")
        if not quantity or "value" not in quantity:
            continue
        for coding in part.get("code", {}).get("coding", []):
            metric = METRIC_BY_LOINC.get(coding.get("code", ""))
            if metric is None or coding.get("system") != "http://loinc.org":
                continue
            unit = quantity.get("code") if quantity.get("system") == UCUM else None
            try:
                value = convert(float(quantity["value"]), unit or metric.unit, metric.unit)
            except UnitError:
                continue
            out[metric.alias] = (value, metric.unit)
    return out


def evaluate(rules: list[ThresholdRule], observation: dict[str, Any]) -> list[Firing]:
    values = readings(observation)
    firings = []
    for rule in rules:
        if rule.metric in values:
            value, unit = values[rule.metric]
            if rule.holds(value):
                firings.append(
                    Firing(rule, value, unit, f"{rule.metric} {value:g} {unit} {rule.op} {rule.threshold:g} {unit}")
                )
    return firings
