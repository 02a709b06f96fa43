"""Vigil's care-plan rule language and its pure evaluator (DESIGN §6-7, docs/rules.md).

No I/O here except `rules.loader` reading the YAML file it is given. Modules:
model (the language), loader (YAML with line numbers), quantity, readings (Observation -> Reading),
window, goals, enrollment, conditions + fastpath (semantics), evaluate (entry points), results,
pro (questionnaire scoring), episodes + episode_resources (alert episodes), testcases, backtest.
"""
