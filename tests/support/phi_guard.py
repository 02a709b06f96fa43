"""A pytest plugin that fails any test whose log records carry PHI (DESIGN §9: no PHI in logs).

For the duration of every test (setup, call and teardown) a handler on the root logger, with the
root level set to DEBUG, formats each record in full (message with its arguments, exception
and stack text) and runs `find_phi` over it. A test whose records matched fails with a report that
names the test, the logger, the code line that logged, and the kind of PHI, with the matched text
masked: the failure output must not spray the PHI it found.

What counts as PHI (`find_phi`):
- phone numbers: `+` and 10-15 digits (E.164, separators allowed); North-American numbers with 555
  as area code or exchange in any usual format (the fictional numbers the fixtures use); and any
  number the fixtures use as a telecom value or an E.164 string, by its digits;
- patient names and birth dates found in the fixtures (`Corpus`, built at session start by
  scanning tests/, runtime/, bench/, docs/ and ../shared for `family`, `given`, `name[].text`,
  `birthDate`, and name tables such as `FAMILY_NAMES`), so the list cannot go stale;
- email addresses (the recipients' contact points, like phone numbers);
- readings: a number followed by a clinical unit (the canonical units in common/codes.py plus
  their usual spellings, e.g. mmHg, lb, bpm, mg/dl, °F); a metric named with a value
  (`systolic=188`, `"bpm": 64`, `spo2: 97`); a blood-pressure pair (`188/72`, first above second);
  a percentage only where the line speaks of oxygen saturation.
Durations, counts, ports, versions, ids and resource references are not PHI and are not matched.

A test that logs PHI on purpose (to prove redaction elsewhere) opts out with
`@pytest.mark.allow_phi_logs`. The plugin registers that marker itself.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

MARKER = "allow_phi_logs"
REPO = Path(__file__).resolve().parents[2]
# Where fixtures and sample data live: the fictional patients whose names must never reach a log.
CORPUS_ROOTS = (REPO / "tests", REPO / "runtime", REPO / "bench", REPO / "docs", REPO.parent / "shared")
_CORPUS_SUFFIXES = {".py", ".json", ".jsonl", ".ndjson", ".yaml", ".yml", ".md"}
_SKIP_DIRS = {".git", ".venv", "__pycache__", "node_modules", ".vigil"}
_MAX_FILE_BYTES = 2_000_000

# ---------------------------------------------------------------------------------------------
# Detection: pure functions over one formatted log record.


@dataclass(frozen=True)
class Finding:
    kind: str  # phone | email | name | birth-date | reading
    rule: str  # which rule matched, for the failure report
    start: int
    end: int
    text: str  # the matched text: never print it, print `mask(text)`


def mask(text: str) -> str:
    """First character and length: enough to find the line, not enough to read the PHI."""
    return f"{text[:1]}…({len(text)} chars)" if text else "…(0 chars)"


# Name tokens that are too common to tell a patient apart from ordinary log words.
_NAME_STOPWORDS = frozenset({
    "test", "demo", "patient", "example", "sample", "unknown", "anonymous", "none", "null", "true", "false",
    "user", "name", "family", "given", "nurse", "doctor", "care", "team", "clinic", "acme", "mister", "miss",
    "the", "and", "van", "von", "del",
})
_BIRTH_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")


@dataclass
class Corpus:
    """Values taken from the fixtures: matched exactly, because in general they cannot be told
    apart from ordinary words and dates."""

    names: frozenset[str] = frozenset()
    birth_dates: frozenset[str] = frozenset()
    phones: frozenset[str] = frozenset()  # digits only
    _names_re: re.Pattern[str] | None = field(init=False, default=None, repr=False)
    _dates_re: re.Pattern[str] | None = field(init=False, default=None, repr=False)
    _last10: frozenset[str] = field(init=False, default=frozenset(), repr=False)

    def __post_init__(self) -> None:
        names = sorted(self.names, key=len, reverse=True)
        if names:
            self._names_re = re.compile(r"(?<![\w])(?:" + "|".join(map(re.escape, names)) + r")(?![\w])")
        spellings: set[str] = set()
        for d in self.birth_dates:
            y, m, dd = _BIRTH_DATE.match(d).groups()  # type: ignore[union-attr]
            spellings |= {d, f"{m}/{dd}/{y}", f"{dd}.{m}.{y}", f"{y}{m}{dd}"}
        if spellings:
            self._dates_re = re.compile(r"(?<![\w])(?:" + "|".join(map(re.escape, sorted(spellings))) + r")(?![\w])")
        self._last10 = frozenset(p[-10:] for p in self.phones if len(p) >= 10)

    @classmethod
    def from_values(cls, names: Iterable[str] = (), birth_dates: Iterable[str] = (),
                    phones: Iterable[str] = ()) -> Corpus:
        """Normalize raw fixture values: names split into distinctive tokens, full-date birth
        dates only, phones reduced to their digits."""
        tokens = {t for n in names for t in re.split(r"[^\w'’-]+", n)
                  if len(t) >= 3 and t[0].isalpha() and t.lower() not in _NAME_STOPWORDS}
        dates = {d for d in birth_dates if _BIRTH_DATE.match(d)}
        digits = {d for d in (re.sub(r"\D", "", p) for p in phones) if 7 <= len(d) <= 15}
        return cls(frozenset(tokens), frozenset(dates), frozenset(digits))


EMPTY_CORPUS = Corpus()

# Phones. Lookarounds keep these off the digits inside ids, uuids, timestamps and versions.
_E164 = re.compile(r"(?<![\w+])\+\d(?:[ .()-]{0,2}\d){9,14}(?![\d])")
_NANP = re.compile(r"(?<![\w+./:-])(?:\+?1[ .-]?)?(\(\d{3}\)|\d{3})[ .-]?(\d{3})[ .-]?(\d{4})(?![\w-])")
_NANP_LOCAL_555 = re.compile(r"(?<![\w+./:-])555[ .-]\d{4}(?![\w-])")
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
_DIGIT_RUN = re.compile(r"(?<![\w])\+?\(?\d[\d ().-]{5,20}\d(?![\w])")

# Readings. Units: canonical UCUM codes of the metrics, plus the spellings people and devices use.
# Durations (ms, s, min, h), "1" and per-day counts are left out: they are how benign lines speak.
_EXTRA_UNITS = (
    "mmHg", "mm Hg", "mm[Hg]", "mmhg", "kg", "kgs", "lb", "lbs", "[lb_av]", "kg/m2", "kg/m²", "cm", "[in_i]",
    "mg/dL", "mg/dl", "mmol/L", "mmol/l", "bpm", "BPM", "/min", "1/min", "{beats}/min", "beats/min",
    "beats/minute", "{breaths}/min", "breaths/min", "breaths/minute", "Cel", "°C", "°F", "[degF]", "degF",
    "degC", "{score}", "{steps}", "steps/day", "kcal",
)
_NOT_READING_UNITS = frozenset({"ms", "s", "min", "h", "d", "1", "/d", "%", "m", "g"})
_NUMBER = r"(?<![\w.,/-])[-+]?\d+(?:[.,]\d+)?"
# A metric named with its value: payload keys devices send and the rule aliases of common/codes.py.
_EXTRA_KEYS = (
    "systolic", "diastolic", "sys", "dia", "bpm", "pulse", "hr", "heartrate", "heart_rate", "spo2", "sp02",
    "percent", "weight", "glucose", "temperature", "temp", "score", "respiration", "resp_rate",
)
_NOT_READING_KEYS = frozenset({"steps"})
_BP_PAIR = re.compile(r"(?<![\w./:-])(\d{2,3})/(\d{2,3})(?![\w/.:-])")
_NUMBER_RE = re.compile(_NUMBER)
_PERCENT_AFTER = re.compile(r"\s?%")
_SATURATION_WORDS = ("spo2", "sp02", "oxygen", "saturation")
_SATURATION_SHORT = re.compile(r"\b(?:o2|sat)\b")
_SPO2_SPACE = re.compile(r"(?<![\w])[Ss][Pp][Oo0]2\s+\d{2,3}(?![\w])")
_KEY_VALUE = re.compile(r"""(?<![\w-])([A-Za-z][\w-]*)["']?\s*[:=]\s*["']?[-+]?\d+(?:[.,]\d+)?""")


def _reading_patterns() -> tuple[re.Pattern[str], frozenset[str]]:
    from common.codes import CANONICAL_UNIT_BY_LOINC, METRICS

    units = {m.unit for m in METRICS.values()} | set(CANONICAL_UNIT_BY_LOINC.values()) | set(_EXTRA_UNITS)
    units -= _NOT_READING_UNITS
    unit_alt = "|".join(re.escape(u) for u in sorted(units, key=len, reverse=True))
    unit_after = re.compile(r"\s?(?:" + unit_alt + r")(?![\w\[{/²])")
    keys = frozenset(k.lower() for k in {m.alias for m in METRICS.values()} | set(_EXTRA_KEYS)) - _NOT_READING_KEYS
    return unit_after, keys


# Built from common/codes.py, so a metric added there is guarded here without an edit.
_UNIT_AFTER, _READING_KEYS = _reading_patterns()


def find_phi(text: str, corpus: Corpus = EMPTY_CORPUS) -> list[Finding]:
    """Every stretch of `text` that looks like PHI, ordered by position, overlaps removed.

    Cheap substring checks gate the costlier patterns: this runs on every log record of the suite."""
    found: list[Finding] = []
    if corpus._names_re is not None:
        found += [
            Finding("name", "fixture name", m.start(), m.end(), m.group()) for m in corpus._names_re.finditer(text)
        ]
    if "@" in text:
        found += [Finding("email", "email address", m.start(), m.end(), m.group()) for m in _EMAIL.finditer(text)]
    if not any(c.isdigit() for c in text):
        return _without_overlaps(found)
    if corpus._dates_re is not None:
        found += [Finding("birth-date", "fixture birth date", m.start(), m.end(), m.group())
                  for m in corpus._dates_re.finditer(text)]
    # Phone numbers.
    if "+" in text:
        found += [Finding("phone", "E.164 number", m.start(), m.end(), m.group()) for m in _E164.finditer(text)]
    if "555" in text:
        for m in _NANP.finditer(text):
            if "555" in (m.group(1).strip("()"), m.group(2)):
                found.append(Finding("phone", "555 number", m.start(), m.end(), m.group()))
        found += [Finding("phone", "555 number", m.start(), m.end(), m.group())
                  for m in _NANP_LOCAL_555.finditer(text)]
    if corpus.phones:
        # By digits, whatever the separators: a fixture number that the rules above do not cover
        # (a foreign number written without its `+`).
        for m in _DIGIT_RUN.finditer(text):
            d = re.sub(r"\D", "", m.group())
            if d in corpus.phones or (len(d) >= 10 and any(p in d for p in corpus._last10)):
                found.append(Finding("phone", "fixture phone", m.start(), m.end(), m.group()))
    # Readings.
    lower = text.lower()
    saturation = "%" in text and (any(w in lower for w in _SATURATION_WORDS) or bool(_SATURATION_SHORT.search(lower)))
    for m in _NUMBER_RE.finditer(text):
        unit = _UNIT_AFTER.match(text, m.end())
        if unit:
            found.append(
                Finding("reading", "number with a clinical unit", m.start(), unit.end(), text[m.start() : unit.end()])
            )
        elif saturation and (pct := _PERCENT_AFTER.match(text, m.end())):
            found.append(Finding("reading", "oxygen saturation percentage", m.start(), pct.end(),
                                 text[m.start():pct.end()]))
    if ":" in text or "=" in text:
        found += [Finding("reading", "metric with a value", m.start(), m.end(), m.group())
                  for m in _KEY_VALUE.finditer(text) if m.group(1).lower() in _READING_KEYS]
    if "p" in lower:
        found += [Finding("reading", "metric with a value", m.start(), m.end(), m.group())
                  for m in _SPO2_SPACE.finditer(text)]
    if "/" in text:
        for m in _BP_PAIR.finditer(text):
            high, low = int(m.group(1)), int(m.group(2))
            if 60 <= high <= 300 and 30 <= low <= 200 and high > low:
                found.append(Finding("reading", "blood-pressure pair", m.start(), m.end(), m.group()))
    return _without_overlaps(found)


def _without_overlaps(found: list[Finding]) -> list[Finding]:
    out: list[Finding] = []
    for f in sorted(found, key=lambda f: (f.start, -(f.end - f.start))):
        if out and f.start < out[-1].end:
            continue
        out.append(f)
    return out


def masked(text: str, findings: list[Finding]) -> str:
    """`text` with each finding replaced by its kind and mask."""
    parts, at = [], 0
    for f in findings:
        parts += [text[at:f.start], f"[{f.kind} {mask(f.text)}]"]
        at = f.end
    parts.append(text[at:])
    return "".join(parts)


def redact(text: str, corpus: Corpus = EMPTY_CORPUS) -> str:
    return masked(text, find_phi(text, corpus))


# ---------------------------------------------------------------------------------------------
# The corpus: names, birth dates and phones of the fictional patients in fixtures and samples.


@dataclass
class _Collected:
    names: set[str] = field(default_factory=set)
    birth_dates: set[str] = field(default_factory=set)
    phones: set[str] = field(default_factory=set)


_NAME_TABLE = re.compile(r"(?i)(first|last|given|family|sur|patient|middle)_?names?$")
_BIRTH_TABLE = re.compile(r"(?i)birth_?dates?$")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# A string literal that is a phone number by its shape: E.164, or a formatted North-American
# number. Bare digit strings count only as telecom values (elsewhere they are ids as often).
_PHONE_LIKE = re.compile(r"^\+\d[\d ().-]{8,20}\d$|^(?:1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}$")


def _walk(obj: Any, out: _Collected) -> None:
    """FHIR-shaped data: HumanName (family, given, text), birthDate, telecom phone values."""
    if isinstance(obj, dict):
        family, given, bd = obj.get("family"), obj.get("given"), obj.get("birthDate")
        if isinstance(family, str):
            out.names.add(family)
        if isinstance(given, str):
            out.names.add(given)
        elif isinstance(given, list | tuple):
            out.names.update(g for g in given if isinstance(g, str))
        if isinstance(bd, str):
            out.birth_dates.add(bd)
        names = obj.get("name")
        for n in names if isinstance(names, list | tuple) else [names]:
            if isinstance(n, dict) and isinstance(n.get("text"), str):
                out.names.add(n["text"])
        if obj.get("system") in ("phone", "sms") and isinstance(obj.get("value"), str):
            out.phones.add(obj["value"])
        for v in obj.values():
            _walk(v, out)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _walk(v, out)
    elif isinstance(obj, str) and _PHONE_LIKE.match(obj.strip()):
        out.phones.add(obj)


_UNKNOWN = object()


def _literal(node: ast.AST) -> Any:
    """Like ast.literal_eval, but keeps what it can: f-strings and names become _UNKNOWN."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values, strict=True) if k is not None}
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        return [_literal(e) for e in node.elts]
    return _UNKNOWN


# Parsing every test module costs about a second per session; only modules that mention these
# are parsed. Phone literals are read by pattern from every file (they are everywhere).
_NEEDS_AST = ("family", "given", "birthDate", "birth_date", "BIRTH_DATES", "NAMES", "names =", "names: ")
_QUOTED = re.compile(r"""(?<=["'])\+?[\d(][\d ().-]{6,22}\d(?=["'])""")
_TELECOM_VALUE = re.compile(
    r"""["']system["']\s*:\s*["'](?:phone|sms)["']\s*,\s*["']value["']\s*:\s*["']([^"'{]+)["']"""
)


def _scan_python(source: str, out: _Collected) -> None:
    out.phones.update(m.group() for m in _QUOTED.finditer(source) if _PHONE_LIKE.match(m.group()))
    out.phones.update(m.group(1) for m in _TELECOM_VALUE.finditer(source))
    if not any(word in source for word in _NEEDS_AST):
        return
    try:
        tree = ast.parse(source)
    except SyntaxError:
        _scan_text(source, out)
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            _walk(_literal(node), out)
        elif isinstance(node, ast.Call):
            # HumanName(family=..., given=[...]) and Patient(birthDate=...) built with keywords.
            kw = {k.arg: _literal(k.value) for k in node.keywords if k.arg}
            _walk({key: kw[key] for key in ("family", "given", "birthDate") if key in kw}, out)
            if isinstance(kw.get("birth_date"), str):
                out.birth_dates.add(kw["birth_date"])
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = _literal(node.value) if node.value is not None else _UNKNOWN
            if isinstance(value, list) and any(isinstance(t, ast.Name) and _NAME_TABLE.search(t.id) for t in targets):
                out.names.update(v for v in value if isinstance(v, str))
            if isinstance(value, list) and any(isinstance(t, ast.Name) and _BIRTH_TABLE.search(t.id) for t in targets):
                out.birth_dates.update(v for v in value if isinstance(v, str) and _ISO_DATE.fullmatch(v))


_TEXT_RULES = (
    (re.compile(r"""["']?family["']?\s*[:=]\s*["']?([A-Z][\w'’ -]{1,40}?)["'\n,}]"""), "names"),
    (re.compile(r"""["']?given["']?\s*[:=]\s*\[?\s*["']?([A-Z][\w'’ -]{1,40}?)["'\n,}\]]"""), "names"),
    (re.compile(r"""["']?birthDate["']?\s*[:=]\s*["']?(\d{4}-\d{2}-\d{2})"""), "birth_dates"),
)


def _scan_text(text: str, out: _Collected) -> None:
    """Documents and files that do not parse: the same keys, read by pattern."""
    for pattern, bucket in _TEXT_RULES:
        getattr(out, bucket).update(m.group(1).strip() for m in pattern.finditer(text))


def _scan_file(path: Path, out: _Collected) -> None:
    try:
        if path.stat().st_size > _MAX_FILE_BYTES:
            return
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return
    suffix = path.suffix
    if suffix == ".py":
        _scan_python(text, out)
    elif suffix == ".json":
        try:
            _walk(json.loads(text), out)
        except ValueError:
            _scan_text(text, out)
    elif suffix in (".jsonl", ".ndjson"):
        for line in text.splitlines():
            try:
                _walk(json.loads(line), out)
            except ValueError:
                _scan_text(line, out)
    elif suffix in (".yaml", ".yml"):
        import yaml

        try:
            for doc in yaml.safe_load_all(text):
                _walk(doc, out)
        except yaml.YAMLError:
            _scan_text(text, out)
    else:
        _scan_text(text, out)


def _files(roots: Iterable[Path]) -> Iterator[Path]:
    for root in roots:
        if root.is_file():
            yield root
            continue
        if not root.is_dir():
            continue
        for path in root.rglob("*"):
            if path.suffix in _CORPUS_SUFFIXES and not _SKIP_DIRS.intersection(path.parts) and path.is_file():
                yield path


def build_corpus(roots: Iterable[Path] = CORPUS_ROOTS) -> Corpus:
    out = _Collected()
    for path in _files(roots):
        _scan_file(path, out)
    return Corpus.from_values(out.names, out.birth_dates, out.phones)


# ---------------------------------------------------------------------------------------------
# Watching the logs of each test.


@dataclass(frozen=True)
class Leak:
    when: str  # setup | call | teardown
    logger: str
    level: str
    where: str  # file:line of the logging call
    kinds: tuple[str, ...]
    line: str  # the record, PHI masked


_FORMATTER = logging.Formatter("%(message)s")


def format_record(record: logging.LogRecord) -> str:
    """The record as any handler would print it: message with arguments, exception and stack."""
    try:
        return _FORMATTER.format(record)
    except Exception:  # a broken format string must not hide what the arguments carried
        return f"{record.msg!s} {record.args!r}"


# Loggers of the far side of a wire that tests stand up on loopback. aiosmtpd (requirements-dev.txt
# only; Vigil never runs it) logs every line of the mail it receives at DEBUG: the message as the
# provider sees it, not a Vigil log line. What Vigil itself logs about the send is still checked.
FAR_SIDE_LOGGERS = ("mail.log",)


def _far_side(name: str) -> bool:
    return any(name == n or name.startswith(n + ".") for n in FAR_SIDE_LOGGERS)


class PhiLogHandler(logging.Handler):
    def __init__(self, corpus: Corpus) -> None:
        super().__init__(logging.DEBUG)
        self.corpus = corpus
        self.when = "setup"
        self.leaks: list[Leak] = []

    def emit(self, record: logging.LogRecord) -> None:
        if _far_side(record.name):
            return
        try:
            text = format_record(record)
            findings = find_phi(text, self.corpus)
        except Exception:  # the guard must never break the logging call of the code under test
            self.handleError(record)
            return
        if findings:
            where = f"{_relative(record.pathname)}:{record.lineno}"
            kinds = tuple(sorted({f"{f.kind} ({f.rule})" for f in findings}))
            self.leaks.append(Leak(self.when, record.name, record.levelname, where, kinds,
                                   _clip(masked(text, findings))))

    def take(self) -> list[Leak]:
        leaks, self.leaks = self.leaks, []
        return leaks


def _relative(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return path


def _clip(text: str, limit: int = 400) -> str:
    text = text.replace("\n", "⏎ ")
    return text if len(text) <= limit else text[:limit] + "…"


def describe(nodeid: str, leaks: list[Leak], limit: int = 10) -> str:
    """The failure report: test, logger, code line, PHI kind, masked record; repeats counted."""
    counts: dict[tuple[str, str, str, str, tuple[str, ...]], list[Leak]] = {}
    for leak in leaks:
        counts.setdefault((leak.when, leak.logger, leak.level, leak.where, leak.kinds), []).append(leak)
    lines = [f"PHI in log records of {nodeid}: {len(leaks)} record(s) "
             f"(mark the test @pytest.mark.{MARKER} only if it logs PHI on purpose)"]
    for (when, logger, level, where, kinds), group in list(counts.items())[:limit]:
        times = f" ×{len(group)}" if len(group) > 1 else ""
        lines.append(f"  [{when}] logger {logger!r} {level} at {where}{times}: {', '.join(kinds)}")
        lines.append(f"      {group[0].line}")
    if len(counts) > limit:
        lines.append(f"  … and {len(counts) - limit} more distinct logging call(s)")
    return "\n".join(lines)


class PhiGuard:
    """One per pytest session (a plain object, so an inner pytester session gets its own)."""

    def __init__(self, corpus: Corpus) -> None:
        self.corpus = corpus
        self.pending: dict[str, list[Leak]] = {}

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[Any]:
        handler = PhiLogHandler(self.corpus)
        item.stash[_HANDLER] = handler
        root = logging.getLogger()
        level = root.level
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)
        try:
            return (yield)
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
            self.pending.pop(item.nodeid, None)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        self._phase(item, "setup")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> None:
        self._phase(item, "call")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> None:
        self._phase(item, "teardown")

    @staticmethod
    def _phase(item: pytest.Item, when: str) -> None:
        handler = item.stash.get(_HANDLER, None)
        if handler is not None:
            handler.when = when

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
        report: pytest.TestReport = yield
        handler = item.stash.get(_HANDLER, None)
        if handler is None:
            return report
        if item.get_closest_marker(MARKER) is not None:
            handler.take()
            return self._masked(report)
        leaks = self.pending.pop(item.nodeid, []) + handler.take()
        if call.when == "setup" and report.passed:
            # Judged with the call: a leak in a fixture fails the test, and the test still runs.
            self.pending[item.nodeid] = leaks
            return report
        if leaks:
            text = describe(item.nodeid, leaks)
            if report.failed:
                report.sections.append(("PHI in log records", text))
            else:
                report.outcome = "failed"
                report.longrepr = text
        return self._masked(report)

    def _masked(self, report: pytest.TestReport) -> pytest.TestReport:
        """pytest prints the captured logs and output of a failed test: mask the PHI in them, even
        for a test allowed to log it."""
        if report.failed:
            report.sections = [(title, redact(content, self.corpus)) for title, content in report.sections]
        return report


_HANDLER = pytest.StashKey[PhiLogHandler]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}: the test logs PHI on purpose; the PHI log guard ignores it")
    if not config.pluginmanager.has_plugin("phi_guard_session"):
        config.pluginmanager.register(PhiGuard(build_corpus()), "phi_guard_session")
