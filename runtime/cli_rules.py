"""`vigil rules validate|test|backtest` — the care-manager tools (docs/rules.md §7-8).

Exit codes: 0 success; 1 the command ran and found problems (invalid rules, failing cases);
2 it could not run as asked (unknown ruleset, bad duration, no store, no files).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

from common.clock import SystemClock, iso
from rules.enrollment import period_bound
from rules.loader import Problem, RuleLoadError, load_ruleset, load_rulesets, load_test_suite, ruleset_files
from rules.model import Ruleset
from rules.testcases import results_text, run_suite
from runtime.backtest_store import report_text, run_backtest
from runtime.settings import Settings

_DURATION = re.compile(r"^\s*(\d+)\s*([hdw])\s*$")
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


class UsageError(Exception):
    """The command cannot run as asked; the message says what to change (exit 2)."""


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `rules` command group to the `vigil` parser."""
    rules = sub.add_parser("rules", help="validate, test and backtest care-plan alert rules",
                           description="Tools for writing alert rules (guide: docs/rules.md).")
    actions = rules.add_subparsers(required=True, metavar="ACTION")

    validate = actions.add_parser(
        "validate", help="check every ruleset in a directory",
        description="Check every ruleset (*.yaml directly in DIR) and that rule ids are unique. Prints each "
                    "problem as file:line:column: field: message and exits 1 if there is any.")
    validate.add_argument("dir", nargs="?", type=Path, metavar="DIR",
                          help="rules directory or one ruleset file (default: the configured rules dir, "
                               "$VIGIL_RULES_PATH)")
    validate.set_defaults(func=_validate)

    test = actions.add_parser(
        "test", help="run care-manager test cases",
        description="Run test-case files (docs/rules.md §7). Prints PASS/FAIL per case and exits 1 if any fails.")
    test.add_argument("files", nargs="*", type=Path, metavar="FILE",
                      help="test-case YAML files (default: every *.yaml in <rules dir>/tests/)")
    test.set_defaults(func=_test)

    bt = actions.add_parser(
        "backtest", help="replay stored history through a ruleset and report alert volume",
        description="Replay the stored readings of the patients enrolled in the ruleset's program (an active "
                    "CarePlan overlapping the period) through the same evaluator and episode logic as live, "
                    "and print alerts per rule per patient-week. Rules with enabled: false are included.")
    bt.add_argument("ruleset", metavar="RULESET", help="a ruleset id from the rules dir, or a path to a ruleset YAML")
    bt.add_argument("--since", required=True, metavar="WHEN",
                    help="start: a duration before --until (90d, 12w, 48h) or an ISO date / date-time with offset")
    bt.add_argument("--until", metavar="ISO",
                    help="end: ISO date (through that day, UTC) or date-time with offset (default: now)")
    bt.add_argument("--patient", metavar="Patient/ID", help="only this patient")
    bt.set_defaults(func=_backtest)


# -- validate -------------------------------------------------------------------------------------
def _validate(args: argparse.Namespace, settings: Settings) -> int:
    dirs = (Path(args.dir),) if args.dir else settings.rules_dirs
    target = ", ".join(map(str, dirs))
    try:
        rulesets = [load_ruleset(dirs[0])] if dirs[0].is_file() else load_rulesets(dirs)
        problems = _chain_problems(dirs, settings)
    except RuleLoadError as exc:
        problems = exc.problems
    if problems:
        _print_problems(problems, sys.stdout)
        print(f"{len(problems)} problem(s) in {target}")
        return 1
    if not rulesets:
        print(f"vigil: no ruleset files (*.yaml, *.yml) in {target}", file=sys.stderr)
        return 2
    n_rules = sum(len(rs.rules) for rs in rulesets)
    print(f"ok: {len(rulesets)} ruleset(s), {n_rules} rule(s) in {target}")
    return 0


def _chain_problems(dirs: Sequence[Path], settings: Settings) -> list[Problem]:
    """Rules that escalate through a chain the chains file does not define."""
    from notifications.escalation_chains import load_chains
    from runtime.rule_checks import unknown_chain_problems

    return unknown_chain_problems(dirs, load_chains(settings.escalation_chains))


def _print_problems(problems: Sequence[Problem], out: TextIO) -> None:
    for problem in problems:
        print(problem, file=out)


# -- test -----------------------------------------------------------------------------------------
def _test(args: argparse.Namespace, settings: Settings) -> int:
    files = list(args.files)
    if not files:
        folders = [Path(d) / "tests" for d in settings.rules_dirs]
        files = sorted(p for folder in folders if folder.is_dir() for p in folder.iterdir()
                       if p.suffix in (".yaml", ".yml"))
        if not files:
            where = ", ".join(map(str, folders))
            print(f"vigil: no test files given and none (*.yaml) in {where}", file=sys.stderr)
            return 2
    passed = failed = broken = 0
    for path in files:
        try:
            suite, ruleset = load_test_suite(path)
        except RuleLoadError as exc:
            # A test file that does not load (or whose ruleset does not) is a failure, not a crash.
            _print_problems(exc.problems, sys.stdout)
            print(f"{path}: not run")
            broken += 1
            continue
        results = run_suite(suite, ruleset)
        print(results_text(results, str(path)))
        failed += sum(not r.passed for r in results)
        passed += sum(r.passed for r in results)
    if len(files) > 1:
        tail = f", {broken} file(s) not run" if broken else ""
        print(f"total: {passed} passed, {failed} failed in {len(files)} file(s){tail}")
    return 1 if failed or broken else 0


# -- backtest -------------------------------------------------------------------------------------
def _backtest(args: argparse.Namespace, settings: Settings) -> int:
    try:
        # The CLI runs on the system clock (bootstrap's default), so "now" is known before the store opens.
        until = parse_until(args.until) if args.until else SystemClock().now()
        since = parse_since(args.since, until)
        ruleset, source = resolve_ruleset(args.ruleset, settings.rules_dirs)
        patient = _patient_ref(args.patient) if args.patient else None
        if settings.embedded and not settings.path("fhir.db").exists():
            raise UsageError(f"no FHIR store at {settings.path('fhir.db')}; ingest data first "
                             "(vigil ingest / vigil demo), or give --data-dir or VIGIL_FHIR_URL")
    except UsageError as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return 2
    except RuleLoadError as exc:
        _print_problems(exc.problems, sys.stderr)
        print(f"vigil: ruleset {args.ruleset} has problems; fix them first (vigil rules validate)", file=sys.stderr)
        return 2

    from runtime.bootstrap import bootstrap

    try:
        services = bootstrap(settings)
    except RuleLoadError as exc:
        _print_problems(exc.problems, sys.stderr)
        dirs = ", ".join(map(str, settings.rules_dirs))
        print(f"vigil: the configured rules dirs ({dirs}) have problems", file=sys.stderr)
        return 2
    try:
        started = time.monotonic()
        report, enrolled = run_backtest(services.store, ruleset, since, until, patient=patient, progress=sys.stderr)
        if not enrolled:
            who = f"{patient} is not" if patient else "no patient is"
            print(f"vigil: {who} enrolled in program {ruleset.program.id} during the period (no active "
                  f"CarePlan naming {', '.join([*ruleset.program.canonical, *ruleset.program.category])})",
                  file=sys.stderr)
            if patient is not None:
                return 1
        print(f"backtest of ruleset {ruleset.ruleset} ({source}), program {ruleset.program.id}")
        print(report_text(report, ruleset))
        print(f"done in {time.monotonic() - started:.1f} s", file=sys.stderr)
        return 0
    finally:
        services.close()


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text)
    if not match or int(match.group(1)) == 0:
        raise UsageError(f"{text!r} is not a duration; use a whole number and h, d or w (48h, 90d, 12w)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def parse_since(text: str, until: datetime) -> datetime:
    """A duration before `until`, or an ISO date (its start, UTC) or date-time with an offset."""
    since = until - parse_duration(text) if _DURATION.match(text) else _parse_time(text, "--since", end_of_day=False)
    if since >= until:
        raise UsageError(f"--since {text} is not before --until {iso(until)}")
    return since


def parse_until(text: str) -> datetime:
    return _parse_time(text, "--until", end_of_day=True)


def _parse_time(text: str, option: str, *, end_of_day: bool) -> datetime:
    # The cohort has no one zone, so a bare date is a UTC day (the help text says so).
    found = period_bound(text, end_of_day=end_of_day, tz=UTC)
    if found is None:
        raise UsageError(f"{option} {text!r} is not a duration (90d) nor an ISO date (2026-11-20) or date-time "
                         "with an offset (2026-11-20T09:00:00-06:00)")
    return found


def _patient_ref(text: str) -> str:
    ref = text if text.startswith("Patient/") else f"Patient/{text}"
    if not re.fullmatch(r"Patient/[A-Za-z0-9\-.]{1,64}", ref):
        raise UsageError(f"--patient {text!r} is not a patient reference like Patient/p1")
    return ref


def resolve_ruleset(name: str, rules_dir: Path | Sequence[Path]) -> tuple[Ruleset, str]:
    """A ruleset by id from the rules directories, or by path; (ruleset, where it came from)."""
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml") or as_path.is_file():
        if not as_path.is_file():
            raise UsageError(f"no ruleset file {name}")
        return load_ruleset(as_path), str(as_path)
    try:
        files = ruleset_files(rules_dir)
    except RuleLoadError:
        raise UsageError(f"a rules dir in {rules_dir} is not a directory (set VIGIL_RULES_PATH)") from None
    found: dict[str, Path] = {}
    for path in files:
        try:
            ruleset = load_ruleset(path)
        except RuleLoadError:
            if path.stem == name:
                raise  # the file the user most likely meant: show its problems
            continue
        found[ruleset.ruleset] = path
        if ruleset.ruleset == name:
            return ruleset, str(path)
    valid = ", ".join(sorted(found)) or "none"
    raise UsageError(f"unknown ruleset {name!r} in {rules_dir}; valid: {valid} (or give a path to a YAML file)")
