"""What an evaluation returns: which rules fired and why, in a form people and resources can use.

Explanation text never contains identifiers or names: it speaks of metrics, values, units, windows
and where each threshold came from. References to the readings travel separately (`implicated`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

from rules.model import Rule
from rules.quantity import format_value
from rules.readings import Reading


@dataclass(frozen=True, slots=True)
class ResolvedThreshold:
    name: str  # "value" or the param name
    metric: str
    value: float  # canonical unit of the metric
    unit: str
    source: str  # rule | default | goal | override
    detail: str  # identifier-free: "rule value 2 [lb_av]", "active goal <= 135 mm[Hg]"
    goal_ref: str | None = None
    strict: bool = False  # from a goal that excludes its own bound

    def describe(self) -> str:
        return f"{format_value(self.value, self.unit)} ({self.detail})"


@dataclass(slots=True)
class ConditionResult:
    """Treat as immutable; not frozen only because frozen dataclasses are slow to build on the hot path."""

    kind: str
    held: bool
    describe: Callable[[], str]  # text is built only when someone reads it (most results are discarded)
    readings: tuple[Reading, ...] = ()
    thresholds: tuple[ResolvedThreshold, ...] = ()
    children: tuple[ConditionResult, ...] = ()
    gap_start: datetime | None = None  # absence: when the gap began

    @property
    def text(self) -> str:
        return self.describe()

    def contributing(self) -> Iterator[ConditionResult]:
        """The leaves that made this result hold (a negated condition contributes no readings)."""
        if self.kind in ("all", "any"):
            for child in self.children:
                if child.held:
                    yield from child.contributing()
        elif self.kind != "not":
            yield self

    def lines(self, depth: int = 0) -> list[str]:
        mark = "held" if self.held else "did not hold"
        if self.kind in ("all", "any", "not"):
            head = f"{'  ' * depth}{self.kind} ({mark})"
            return [head, *(line for c in self.children for line in c.lines(depth + 1))]
        return [f"{'  ' * depth}{self.text} ({mark})"]


Explained = tuple[ConditionResult, "ConditionResult | None", tuple[str, ...]]


@dataclass(eq=False)
class Firing:
    """A rule that held. The explanation (condition results, readings, thresholds) is built on first
    use: a repeat firing that the episode logic suppresses never needs it. Treat as immutable."""

    ruleset: str
    rule: Rule
    severity: str
    at: datetime  # evaluation time: the triggering reading's effective time, or the sweep's now
    trigger: tuple[Reading, ...]  # the Observation's readings that triggered; () for a sweep
    anchor: datetime  # when the episode this firing belongs to began (trigger time, or gap start)
    explain_with: Callable[[], Explained]
    late: bool = False  # evaluated at a later reading's time because an earlier reading arrived late

    @cached_property
    def _explained(self) -> Explained:
        return self.explain_with()

    @property
    def result(self) -> ConditionResult:
        return self._explained[0]

    @property
    def tier(self) -> ConditionResult | None:
        """The more_severe condition that raised the severity, if any."""
        return self._explained[1]

    @property
    def notes(self) -> tuple[str, ...]:
        return self._explained[2]

    @property
    def rule_id(self) -> str:
        return self.rule.id

    @property
    def trigger_refs(self) -> tuple[str, ...]:
        return tuple(sorted({r.ref for r in self.trigger}))

    @cached_property
    def readings(self) -> tuple[Reading, ...]:
        """Every reading involved: the trigger and the readings of the conditions that held."""
        found = {(r.ref, r.metric): r for r in self.trigger}
        for leaf in self._leaves():
            found.update({(r.ref, r.metric): r for r in leaf.readings})
        return tuple(sorted(found.values(), key=lambda r: (r.effective, r.ref, r.metric)))

    @property
    def implicated_refs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.ref for r in self.readings))

    @cached_property
    def thresholds(self) -> tuple[ResolvedThreshold, ...]:
        return tuple(t for leaf in self._leaves() for t in leaf.thresholds)

    def _leaves(self) -> Iterator[ConditionResult]:
        yield from self.result.contributing()
        if self.tier is not None:
            yield from self.tier.contributing()

    def explanation(self) -> str:
        """Plain text for the DetectedIssue: no identifiers, no names."""
        parts = [f"{self.rule.title} (rule {self.rule.id}, severity {self.severity})."]
        parts += [f"{leaf.text}." for leaf in self.result.contributing()]
        if self.tier is not None:
            parts += [f"Severity raised to {self.severity}: {leaf.text}." for leaf in self.tier.contributing()]
        if self.late:
            parts.append("Evaluated as of a later reading because an earlier reading arrived late.")
        parts += list(self.notes)
        return " ".join(parts)
