"""Checks across rules and notifications that neither package can make alone (rules are pure and
know no escalation chains): every `escalate:` a ruleset names must be a configured chain, or the
alerts of that rule would open and never page anyone."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from rules.loader import Problem, parse_yaml, read_text, ruleset_files


def unknown_chain_problems(rules: Iterable[Path], chains: Mapping[str, object]) -> list[Problem]:
    """One problem (file, line, field) for each rule whose `actions.escalate` is not in `chains`;
    `rules` are ruleset directories or files."""
    problems: list[Problem] = []
    valid = ", ".join(sorted(chains)) or "none"
    files = [p for r in rules for p in ([Path(r)] if Path(r).is_file() else ruleset_files(r))]
    for path in files:
        data, marks = parse_yaml(read_text(path), str(path))
        entries = data.get("rules") if isinstance(data, dict) else None
        for index, rule in enumerate(entries if isinstance(entries, list) else []):
            actions = rule.get("actions") if isinstance(rule, dict) else None
            chain = actions.get("escalate") if isinstance(actions, dict) else None
            if chain is None or chain in chains:
                continue
            where = marks.find(("rules", index, "actions", "escalate"))
            problems.append(Problem(str(path), where[0] if where else None, where[1] if where else None,
                                    f"rules[{index}].actions.escalate",
                                    f"unknown escalation chain {chain!r}; configured chains: {valid} "
                                    "(VIGIL_ESCALATION_CHAINS)"))
    return problems
