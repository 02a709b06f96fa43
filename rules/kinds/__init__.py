"""The built-in condition kinds, one module and one registry line each (docs/architecture.md,
"Adding a rule condition"). Registration order is the order the loader lists valid kinds in."""

from __future__ import annotations

from rules.kinds import absence, aggregate, change, consecutive, count, logic, pro, reading
from rules.registry import ConditionKind, register

BUILTIN = (
    register(ConditionKind("reading", reading.ReadingCond, reading.evaluate, reading.compile, reading.needs)),
    register(ConditionKind("count", count.CountCond, count.evaluate, count.compile, count.needs)),
    register(ConditionKind("change", change.ChangeCond, change.evaluate, change.compile, change.needs)),
    register(ConditionKind("aggregate", aggregate.AggregateCond, aggregate.evaluate, aggregate.compile,
                           aggregate.needs)),
    register(ConditionKind("consecutive", consecutive.ConsecutiveCond, consecutive.evaluate, consecutive.compile,
                           consecutive.needs)),
    register(ConditionKind("absence", absence.AbsenceCond, absence.evaluate, absence.compile, absence.needs)),
    register(ConditionKind("pro", pro.ProCond, pro.evaluate, pro.compile, pro.needs)),
    register(ConditionKind("all", logic.AllCond, logic.evaluate_all, logic.compile_all,
                           children=logic.children_all)),
    register(ConditionKind("any", logic.AnyCond, logic.evaluate_any, logic.compile_any,
                           children=logic.children_any)),
    register(ConditionKind("not", logic.NotCond, logic.evaluate_not, logic.compile_not,
                           children=logic.children_not)),
)
