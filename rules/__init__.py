"""Vigil's care-plan rule language and its pure evaluator (DESIGN §6-7, docs/rules.md).

No I/O here except `rules.loader` reading the YAML file it is given. Modules:
model (the language), registry + kinds (the condition kinds; docs/architecture.md), loader (YAML with
line numbers), quantity, readings (Observation -> Reading), window, goals, enrollment, conditions +
fastpath (semantics), evaluate (entry points), results, pro (questionnaire scoring), episodes +
episode_resources (alert episodes), testcases, backtest.
"""

# The built-in condition kinds register themselves with `rules.registry` on first import of the package.
from rules import kinds as _kinds  # noqa: E402,F401
