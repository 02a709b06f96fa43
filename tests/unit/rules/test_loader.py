"""Loading rulesets: every error names the file, the line, the field, and what would be valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from rules.loader import RuleLoadError, load_ruleset, load_rulesets, parse_ruleset, validate_directory

HEAD = """ruleset: hf
title: Heart failure
program:
  id: hf
  category: [heart-failure]
rules:
"""


def problems(text: str) -> list[str]:
    with pytest.raises(RuleLoadError) as err:
        parse_ruleset(HEAD + text, "hf.yaml")
    return [str(p) for p in err.value.problems]


@pytest.mark.parametrize(
    ("rules_yaml", "expected"),
    [
        ("  - id: a\n    title: A\n    severity: hgh\n    when: {reading: systolic_bp >= 180}\n",
         "hf.yaml:9:15: rules[0].severity: Input should be 'low', 'moderate' or 'high'; got 'hgh'"),
        ("  - id: a\n    title: A\n    severty: high\n    when: {reading: systolic_bp >= 180}\n",
         "hf.yaml:9:5: rules[0].severty: unknown field 'severty'; did you mean 'severity'? valid fields here: "
         "actions, description, enabled, id, more_severe, params, severity, source, suppression, title, "
         "triggers, when"),
        ("  - id: a\n    title: A\n    when: {reading: systolic_bp >= 180}\n",
         "hf.yaml:7:5: rules[0].severity: missing required field 'severity'"),
        ("  - id: a\n    title: A\n    severity: high\n    when:\n      reading: sytolic_bp >= 180\n",
         "hf.yaml:11:16: rules[0].when.reading: unknown metric 'sytolic_bp'; did you mean 'systolic_bp'?"),
        ("  - id: a\n    title: A\n    severity: high\n    when:\n      reading: systolic_bp => 180\n",
         "rules[0].when.reading: 'systolic_bp => 180' is not a comparison; write '<metric> <op> <value>' "
         "with op one of > >= < <= == !="),
        ("  - id: a\n    title: A\n    severity: high\n    when:\n      change: {metric: body_weight, op: '>=',"
         " value: '2 [lbs]', days: 1}\n",
         "hf.yaml:11:54: rules[0].when.change.value: unit '[lbs]' cannot be compared with body_weight (measured in "
         "kg); use one of kg, [lb_av], g"),
        ("  - id: a\n    title: A\n    severity: high\n    when:\n      count: {where: 'spo2 < 92', at_least: 2}\n",
         "hf.yaml:11:14: rules[0].when.count: give exactly one window: `within` (rolling, e.g. 24h, 7d) or `days`"),
        ("  - id: a\n    title: A\n    severity: high\n    when:\n      count: {where: 'spo2 < 92', at_least: 2, "
         "within: 2 days}\n",
         "rules[0].when.count.within: '2 days' is not a duration; expected a whole number and one of m, h, d, w"),
        ("  - id: a\n    title: A\n    severity: high\n    when:\n      trend: {metric: spo2}\n",
         "hf.yaml:11:7: rules[0].when: a condition is a mapping with exactly one key, one of: reading, count, "
         "change, aggregate, consecutive, absence, pro, all, any, not; found keys trend"),
        ("  - id: a\n    title: A\n    severity: high\n    when:\n      reading: {metric: spo2, op: '<', value: "
         "{param: low}}\n",
         "hf.yaml:11:47: rules[0].when.reading.value: unknown param 'low'; params of this rule: none defined"),
        ("  - id: a\n    title: A\n    severity: high\n    when:\n      reading: {metric: spo2, op: '<', value: "
         "{goal: spo2, bound: middle, default: 88}}\n",
         "rules[0].when.reading.value.bound: Input should be 'high' or 'low'; got 'middle'"),
        ("  - id: a\n    title: A\n    severity: high\n    when:\n      pro: {instrument: phq9, band_at_least: bad}\n",
         "rules[0].when.pro.band_at_least: unknown PHQ-9 band 'bad'; valid: minimal, mild, moderate, "
         "moderately-severe, severe"),
        ("  - id: a\n    title: A\n    severity: high\n    when:\n      pro: {instrument: phq9, item: 10, op: '>',"
         " value: 0}\n", "rules[0].when.pro.item: PHQ-9 has 9 scored items"),
        ("  - id: a\n    title: A\n    severity: high\n    more_severe:\n      - severity: low\n        when: "
         "{reading: spo2 < 80}\n    when: {reading: spo2 < 88}\n",
         "hf.yaml:11:19: rules[0].more_severe[0].severity: must be more severe than the rule's 'high'"),
        ("  - id: a\n    title: A\n    severity: high\n    when: {reading: systolic_bp >= 180}\n"
         "  - id: a\n    title: B\n    severity: low\n    when: {reading: systolic_bp >= 170}\n",
         "hf.yaml:11:9: rules[1].id: rule id 'a' is used twice in this ruleset"),
        ("  - id: a\n    title: A\n    severity: high\n    severity: low\n    when: {reading: systolic_bp >= 180}\n",
         "hf.yaml:10:5: rules[0].severity: duplicate key 'severity' (first given on line 9)"),
        ("  - id: A b\n    title: A\n    severity: high\n    when: {reading: systolic_bp >= 180}\n",
         "hf.yaml:7:9: rules[0].id: String should match pattern"),
    ],
)
def test_errors_name_file_line_field_and_valid_options(rules_yaml: str, expected: str) -> None:
    found = problems(rules_yaml)
    assert any(expected in p for p in found), found


def test_several_problems_are_reported_at_once() -> None:
    found = problems("  - id: a\n    title: A\n    severty: high\n    when:\n      all:\n"
                     "        - reading: sytolic_bp >= 180\n        - {foo: 1}\n")
    assert len(found) == 4, found  # unknown field, missing severity, unknown metric, bad condition


def test_yaml_syntax_errors_have_a_line_and_a_hint() -> None:
    found = problems("  - id: a\n    title: A\n    severity: high\n    when:\n      reading: {metric: spo2, op: >=, "
                     "value: 90}\n")
    assert found and found[0].startswith("hf.yaml:11:")
    block = problems("  - id: a\n    op: >=\n")
    assert 'quote operators that start a value, e.g. op: ">="' in block[0]
    flow = problems("  - id: a\n    when: {change: {value: 2 [lb_av]}}\n")
    assert 'quote quantities with units, e.g. value: "2 [lb_av]"' in flow[0]


def test_a_valid_ruleset_loads_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "hf.yaml"
    path.write_text(HEAD + "  - id: gain\n    title: Gain\n    severity: high\n    when:\n"
                    "      change: {metric: body_weight, op: '>=', value: '2 [lb_av]', days: 1}\n")
    ruleset = load_ruleset(path)
    rule = ruleset.rules[0]
    assert (ruleset.ruleset, rule.id, rule.trigger_metrics) == ("hf", "gain", frozenset({"body_weight"}))
    assert rule.suppression.cooldown.total_seconds() == 86400 and rule.wants_task


def test_unreadable_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(RuleLoadError, match="cannot read the file"):
        load_ruleset(tmp_path / "missing.yaml")


def test_directory_validation_collects_every_file_and_cross_file_duplicates(tmp_path: Path) -> None:
    rule = "  - id: same\n    title: A\n    severity: high\n    when: {reading: systolic_bp >= 180}\n"
    (tmp_path / "a.yaml").write_text(HEAD + rule)
    (tmp_path / "b.yaml").write_text(HEAD.replace("ruleset: hf", "ruleset: hf2") + rule)
    (tmp_path / "c.yaml").write_text(HEAD + "  - id: x\n    title: X\n")
    (tmp_path / "notes.txt").write_text("not a ruleset")
    found = [str(p) for p in validate_directory(tmp_path)]
    assert any("b.yaml" in p and "rule id 'same' is also defined in" in p for p in found), found
    assert any("c.yaml:7:5: rules[0].severity: missing required field" in p for p in found), found
    with pytest.raises(RuleLoadError):
        load_rulesets(tmp_path)


def test_default_library_is_valid() -> None:
    assert validate_directory("rules/library") == []
    names = {rs.ruleset for rs in load_rulesets("rules/library")}
    assert names == {"hypertension", "heart-failure", "copd", "diabetes", "depression", "post-discharge"}


def test_every_library_threshold_cites_a_source() -> None:
    for ruleset in load_rulesets("rules/library"):
        for rule in ruleset.rules:
            assert rule.source, f"{ruleset.ruleset}/{rule.id} has no source"


def test_every_condition_example_in_the_guide_is_valid() -> None:
    """docs/rules.md shows one example per condition kind: each must load as written."""
    import re
    import textwrap

    guide = Path("docs/rules.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", guide, flags=re.S)
    kinds_seen: set[str] = set()
    for block in blocks:
        if block.startswith("when:"):
            rule = "  - id: example\n    title: Example\n    severity: low\n" + textwrap.indent(block, "    ")
            ruleset = parse_ruleset(HEAD + rule, "docs/rules.md")
            kinds_seen.add(next(iter(ruleset.rules[0].when.model_dump(by_alias=True, exclude={"unknown_fields_"}))))
        elif block.startswith("  - id:"):
            parse_ruleset(HEAD + block, "docs/rules.md")
        elif block.startswith("ruleset:"):
            parse_ruleset(block, "docs/rules.md")
    assert kinds_seen == {"reading", "count", "change", "aggregate", "consecutive", "absence", "pro", "all"}
