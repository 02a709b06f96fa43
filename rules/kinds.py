"""The built-in condition kinds, one registry line each (docs/rules.md, "Adding a condition kind").

Their models live in `rules.model`, their explaining evaluators in `rules.conditions` and their
fast-path compilers in `rules.fastpath`; a new kind is one module of its own plus one line here.
Registration order is the order the loader lists valid kinds in.
"""

from __future__ import annotations

from rules import conditions as ev
from rules import fastpath as fp
from rules import model as m
from rules.registry import ConditionKind, register

BUILTIN = (
    register(ConditionKind("reading", m.ReadingCond, lambda c, s: ev._reading(c.reading, s), fp._reading)),
    register(ConditionKind("count", m.CountCond, lambda c, s: ev._count(c.count, s), fp._count)),
    register(ConditionKind("change", m.ChangeCond, lambda c, s: ev._change(c.change, s), fp._change)),
    register(ConditionKind("aggregate", m.AggregateCond, lambda c, s: ev._aggregate(c.aggregate, s),
                           fp._aggregate)),
    register(ConditionKind("consecutive", m.ConsecutiveCond, lambda c, s: ev._consecutive(c.consecutive, s),
                           fp._consecutive)),
    register(ConditionKind("absence", m.AbsenceCond, lambda c, s: ev._absence(c.absence, s), fp._absence)),
    register(ConditionKind("pro", m.ProCond, lambda c, s: ev._pro(c.pro, s), fp._pro)),
    register(ConditionKind("all", m.AllCond, lambda c, s: ev._combine("all", c.all, s, stop_when=False),
                           lambda c: fp._all(tuple(fp.compile_check(x) for x in c.all)))),
    register(ConditionKind("any", m.AnyCond, lambda c, s: ev._combine("any", c.any, s, stop_when=True),
                           lambda c: fp._any(tuple(fp.compile_check(x) for x in c.any)))),
    register(ConditionKind("not", m.NotCond, ev._not, fp._not)),
)
