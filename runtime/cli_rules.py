"""`vigil rules validate|test|backtest` — the care-manager tools (docs/rules.md §7-8).

Exit codes: 0 success; 1 the command ran and found problems (invalid rules, failing cases);
2 it could not run as asked (unknown ruleset, bad duration, no store, no files).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from common.clock import SystemClock, iso, parse_instant
from common.codes import LOINC
from fhirstore.errors import ResourceGone, ResourceNotFound
from fhirstore.paging import search_all
from fhirstore.port import FhirStore
from handlers.patient_data import codes_for
from rules.backtest import BacktestReport, PatientData, backtest
from rules.enrollment import enrolls, patient_context
from rules.loader import Problem, RuleLoadError, load_ruleset, load_rulesets, load_test_suite, ruleset_files
from rules.model import Ruleset
from rules.readings import Reading, ReadingError, readings_from_observation
from rules.testcases import results_text, run_suite
from runtime.settings import Settings

_DURATION = re.compile(r"^\s*(\d+)\s*([hdw])\s*$")
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
# One calendar day of margin: `days:` windows start at local midnight, up to 14 h before UTC's.
_DAY_MARGIN = timedelta(days=1)


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
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return start + timedelta(days=1, microseconds=-1) if end_of_day else start
        return parse_instant(text)
    except ValueError:
        raise UsageError(f"{option} {text!r} is not a duration (90d) nor an ISO date (2026-11-20) or date-time "
                         "with an offset (2026-11-20T09:00:00-06:00)") from None


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


def run_backtest(store: FhirStore, ruleset: Ruleset, since: datetime, until: datetime, *, patient: str | None = None,
                 progress: TextIO | None = None) -> tuple[BacktestReport, list[str]]:
    """Load each enrolled patient's history from `store` and replay it; (report, enrolled patients).

    One patient at a time, so memory stays bounded by the largest patient history."""
    careplans = [cp for cp in search_all(store, "CarePlan", {"status": "active", "_count": "1000"})
                 if enrolls(cp, ruleset.program) and _overlaps(cp, since, until)]
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for cp in careplans:
        ref = (cp.get("subject") or {}).get("reference", "")
        if ref.startswith("Patient/") and (patient is None or ref == patient):
            by_patient.setdefault(ref, []).append(cp)
    total = BacktestReport(since, until, rules={r.id: ruleset.ruleset for r in ruleset.rules})
    end_of_data = stored_data_end(store, ruleset, until)
    skipped = 0
    ignored: Counter[str] = Counter()
    meter = _Progress(progress, len(by_patient))
    for ref in sorted(by_patient):
        data, unreadable, problems = load_patient_data(store, ruleset, ref, by_patient[ref], since, until)
        skipped += unreadable
        ignored.update(problems)
        one = backtest([ruleset], {ref: data}, since, until, end_of_data=end_of_data)
        total.patients += one.patients
        total.observed += one.observed
        total.silent += one.silent
        total.readings += one.readings
        total.alerts.update(one.alerts)
        total.firings.update(one.firings)
        meter.step()
    meter.done()
    if skipped and progress is not None:
        print(f"skipped {skipped} Observation(s) that could not be read as readings", file=progress)
    for problem, n in sorted(ignored.items()) if progress is not None else ():
        print(f"care plan override ignored for {n} patient(s), as live: {problem}", file=progress)
    return total, sorted(by_patient)


def stored_data_end(store: FhirStore, ruleset: Ruleset, until: datetime) -> datetime | None:
    """The effective time of the newest stored reading of the ruleset's metrics (any patient) at or
    before `until`: where the data ends, so the replay stops there (rules.backtest)."""
    newest: datetime | None = None
    for metrics, code in _queries(ruleset):
        found = store.search("Observation", {"code": code, "date": f"le{iso(until)}", "_sort": "-date", "_count": "1"})
        for obs in found.resources:
            try:
                times = [r.effective for r in readings_from_observation(obs) if r.metric in metrics]
            except ReadingError:
                continue
            newest = max([*times, *([newest] if newest else [])], default=newest)
    return newest


def load_patient_data(store: FhirStore, ruleset: Ruleset, patient_ref: str, careplans: list[dict[str, Any]],
                      since: datetime, until: datetime) -> tuple[PatientData, int, list[str]]:
    """The patient's context and readings for the replay, how many Observations were unreadable, and
    the care-plan overrides that could not be used (they name rules and params, never values)."""
    # Judge enrollment, overrides and goals as of the end of the period, or of the care plan if sooner.
    ends = [_instant((cp.get("period") or {}).get("end"), end_of_day=True) for cp in careplans]
    as_of = until if any(e is None for e in ends) else min(until, max(e for e in ends if e is not None))
    try:
        resource = store.read("Patient", patient_ref.partition("/")[2])
    except (ResourceNotFound, ResourceGone):
        resource = None
    goals = search_all(store, "Goal", {"subject": patient_ref, "lifecycle-status": "active"})
    ctx, problems = patient_context(patient_ref, now=as_of, rulesets=[ruleset], patient=resource, careplans=careplans,
                             goals=goals)
    start = since - max((r.horizon for r in ruleset.rules), default=timedelta(0)) - _DAY_MARGIN
    readings: list[Reading] = []
    unreadable = 0
    absence = {m for r in ruleset.rules if r.has_absence for m in r.metrics}
    for metrics, code in _queries(ruleset):
        found = search_all(store, "Observation", {"subject": patient_ref, "code": code,
                                                  "date": [f"ge{iso(start)}", f"le{iso(until)}"], "_count": "1000"})
        if metrics & absence:
            # An absence gap that began before the window is anchored on the newest earlier reading.
            found += store.search("Observation", {"subject": patient_ref, "code": code, "date": f"lt{iso(start)}",
                                                  "_sort": "-date", "_count": "1"}).resources
        for obs in found:
            try:
                readings.extend(r for r in readings_from_observation(obs) if r.metric in metrics)
            except ReadingError:
                unreadable += 1
    # The anchor query and the window query can both return a reading at the window's edge.
    unique = list({(r.ref, r.metric): r for r in readings}.values())
    enrolled_until = None if any(e is None for e in ends) else max(e for e in ends if e is not None)
    return PatientData(ctx, unique, enrolled_until), unreadable, problems


def _queries(ruleset: Ruleset) -> list[tuple[frozenset[str], str]]:
    """One Observation search per metric; metrics stored in the same Observation (a BP panel) share one."""
    by_code: dict[str, set[str]] = {}
    for metric in sorted({m for r in ruleset.rules for m in r.metrics}):
        by_code.setdefault(",".join(f"{LOINC}|{c}" for c in codes_for(metric)), set()).add(metric)
    return [(frozenset(metrics), code) for code, metrics in by_code.items()]


def _overlaps(careplan: dict[str, Any], since: datetime, until: datetime) -> bool:
    period = careplan.get("period") or {}
    start, end = _instant(period.get("start")), _instant(period.get("end"), end_of_day=True)
    return (start is None or start <= until) and (end is None or end >= since)


def _instant(text: Any, *, end_of_day: bool = False) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        if len(text) == 10:  # a FHIR date: the whole day counts (read in UTC)
            return _parse_time(text, "", end_of_day=end_of_day)
        return parse_instant(text)
    except (ValueError, UsageError):
        return None


def report_text(report: BacktestReport, ruleset: Ruleset) -> str:
    """The report: per-rule totals and rates, then alerts by ISO week (patient's time zone)."""
    lines = [report.text()]
    disabled = [r.id for r in ruleset.rules if not r.enabled]
    if disabled:
        lines.append(f"not live yet (enabled: false), measured anyway: {', '.join(disabled)}")
    if report.alerts:
        by_week: Counter[tuple[str, str]] = Counter()
        patients: dict[tuple[str, str], set[str]] = {}
        for (rule, patient, week), n in report.alerts.items():
            by_week[(week, rule)] += n
            patients.setdefault((week, rule), set()).add(patient)
        lines += ["", "alerts by week", f"{'week':<10} {'rule':<34} {'alerts':>7} {'patients':>9}"]
        lines += [f"{week:<10} {rule:<34} {n:>7} {len(patients[(week, rule)]):>9}"
                  for (week, rule), n in sorted(by_week.items())]
    else:
        lines.append("no alerts would have opened")
    return "\n".join(lines)


class _Progress:
    """Patients done, on stderr: rewritten in place on a terminal, a few lines otherwise."""

    def __init__(self, out: TextIO | None, total: int) -> None:
        self.out, self.total, self.n = out, total, 0
        self.tty = bool(out is not None and getattr(out, "isatty", lambda: False)())
        self.every = max(1, -(-total // 10))  # about ten lines whatever the cohort size

    def step(self) -> None:
        self.n += 1
        if self.out is None:
            return
        if self.tty:
            print(f"\rbacktest: {self.n}/{self.total} patients", end="", file=self.out, flush=True)
        elif self.n % self.every == 0 or self.n == self.total:
            print(f"backtest: {self.n}/{self.total} patients", file=self.out, flush=True)

    def done(self) -> None:
        if self.out is not None and self.tty and self.total:
            print(file=self.out)
