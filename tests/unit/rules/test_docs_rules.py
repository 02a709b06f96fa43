"""docs/rules.md states things the library and the scorer must keep true: its examples are run here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rules.enrollment import PatientContext
from rules.evaluate import evaluate
from rules.kinds.aggregate import AggregateCond
from rules.kinds.change import ChangeCond
from rules.kinds.consecutive import ConsecutiveCond
from rules.kinds.count import CountCond
from rules.kinds.reading import ReadingCond
from rules.loader import load_rulesets
from rules.model import Rule, iter_conditions
from rules.pro import score_observation, score_response
from rules.readings import readings_from_observation
from rules.window import History

GUIDE = Path("docs/rules.md").read_text()
LIBRARY = {rs.ruleset: rs for rs in load_rulesets("rules/library")}
EXAMPLES = re.findall(r"<!-- example scores: (\w+) total=(\d+) band=([\w-]+) opens=([\w,-]*) -->\n```json\n(.*?)```",
                      GUIDE, flags=re.S)


def test_the_guide_shows_a_response_of_each_instrument() -> None:
    assert sorted(e[0] for e in EXAMPLES) == ["gad7", "phq2", "phq9"]


@pytest.mark.parametrize(("instrument", "total", "band", "opens", "body"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_each_documented_questionnaire_response_scores_and_alerts_as_documented(
        instrument: str, total: str, band: str, opens: str, body: str) -> None:
    response = json.loads(body)
    result = score_response(response)
    assert (result.instrument.key, result.total, result.band) == (instrument, int(total), band)
    obs = score_observation(result, response)
    trigger = readings_from_observation({**obs, "id": obs["id"]})
    ctx = PatientContext("Patient/example")
    fired = {f.rule_id for f in evaluate([LIBRARY["depression"]], trigger, History(trigger), ctx)}
    assert fired == set(filter(None, opens.split(",")))


# -- vital-sign coverage (docs/rules.md §9) -------------------------------------------------------

def _coverage_rows() -> list[tuple[str, list[str], str, str]]:
    section = GUIDE.split("### Vital-sign coverage", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in LIBRARY:
            rows.append((cells[0], re.findall(r"`(\w+)`", cells[1]), cells[2], cells[3]))
    return rows


def _sides(rule: Rule) -> set[tuple[str, str]]:
    """(metric, low|high) for every comparison the rule (or a severity tier) makes."""
    out = set()
    roots = [rule.when, *(t.when for t in rule.more_severe)]
    for root in roots:
        for _, cond in iter_conditions(root):
            if isinstance(cond, ChangeCond):
                spec = cond.change
                out.add((spec.metric, "low" if spec.how == "max_fall" else "high"))
                continue
            if isinstance(cond, ReadingCond):
                comparison = cond.reading
            elif isinstance(cond, CountCond):
                comparison = cond.count.where
            elif isinstance(cond, ConsecutiveCond):
                comparison = cond.consecutive.where
            elif isinstance(cond, AggregateCond):
                comparison = cond.aggregate
            else:
                continue
            if comparison.op in ("<", "<="):
                out.add((comparison.metric, "low"))
            elif comparison.op in (">", ">="):
                out.add((comparison.metric, "high"))
    return out


ROWS = _coverage_rows()


def test_the_coverage_table_lists_every_vital_sign_each_program_reads() -> None:
    assert ROWS, "docs/rules.md §9 has no vital-sign coverage table"
    listed = {(program, metric) for program, metrics, _, _ in ROWS for metric in metrics}
    for rs_id, ruleset in LIBRARY.items():
        read = {m for rule in ruleset.rules for m, _ in _sides(rule) if not m.startswith(("phq", "gad"))}
        assert {(rs_id, m) for m in read} <= listed, f"{rs_id} reads a vital sign the table does not list"


@pytest.mark.parametrize(("program", "metrics", "low", "high"), ROWS, ids=[f"{r[0]}-{r[1][0]}" for r in ROWS])
def test_each_coverage_cell_names_rules_that_cover_that_side_or_says_why_not(
        program: str, metrics: list[str], low: str, high: str) -> None:
    rules = {r.id: r for r in LIBRARY[program].rules}
    for side, cell in (("low", low), ("high", high)):
        if cell.lower().startswith("left out"):
            reason = cell.split(":", 1)[1].strip() if ":" in cell else ""
            assert len(reason) > 10, f"{program} {metrics} {side}: say why it is left out"
            covering = [r for r in rules.values() if any((m, side) in _sides(r) for m in metrics)]
            assert not covering, f"{program} {metrics} {side} is covered by {[r.id for r in covering]}"
            continue
        named = re.findall(r"`([a-z0-9-]+)`", cell)
        assert named, f"{program} {metrics} {side}: name the rule(s) or write 'left out: why'"
        for rule_id in named:
            assert rule_id in rules, f"{rule_id} is not a rule of {program}"
            assert any((m, side) in _sides(rules[rule_id]) for m in metrics), \
                f"{rule_id} does not judge the {side} side of {metrics}"
