"""Load rulesets (and other rule YAML) with errors that name the file, line, field and what is valid.

Reading the file is the only I/O in `rules/`. The YAML is composed into its node tree so every value
keeps its line; pydantic's error locations are then mapped back onto that tree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from rules.model import Ruleset
from rules.testcases import TestSuite

M = TypeVar("M", bound=BaseModel)
Path_ = tuple[Any, ...]
MAX_PROBLEMS = 50


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None  # 1-based
    column: int | None  # 1-based
    field: str  # e.g. rules[0].when.reading.op
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class RuleLoadError(ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


@dataclass
class _Marks:
    values: dict[Path_, tuple[int, int]]
    keys: dict[Path_, tuple[int, int]]

    def find(self, path: Path_, *, key: bool = False) -> tuple[int, int] | None:
        table = (self.keys, self.values) if key else (self.values, self.keys)
        for end in range(len(path), -1, -1):
            for marks in table:
                if path[:end] in marks:
                    return marks[path[:end]]
        return None


def parse_yaml(text: str, source: str) -> tuple[Any, _Marks]:
    """Plain data plus the line/column of every value and key; YAML errors become RuleLoadError."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        marks = _Marks({}, {})
        problems: list[Problem] = []
        data = _construct(loader, node, (), marks, problems, source) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = f"not valid YAML: {exc.problem or exc}"
        if "chomping" in message or "block scalar" in message:
            message += ' (quote operators that start a value, e.g. op: ">=")'
        if "but got '['" in message or "but got ']'" in message:
            message += " (inside {...} quote quantities with units, e.g. value: \"2 [lb_av]\")"
        raise RuleLoadError([Problem(source, mark.line + 1 if mark else None, mark.column + 1 if mark else None,
                                     "", message)]) from None
    finally:
        loader.dispose()
    if problems:
        raise RuleLoadError(problems)
    return data, marks


def _construct(loader: yaml.SafeLoader, node: yaml.Node, path: Path_, marks: _Marks,
               problems: list[Problem], source: str) -> Any:
    marks.values[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                key = str(key)
            key_mark = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key in out:
                first = marks.keys[(*path, key)][0]
                problems.append(Problem(source, *key_mark, _field((*path, key)),
                                        f"duplicate key {key!r} (first given on line {first})"))
                continue
            marks.keys[(*path, key)] = key_mark
            out[key] = _construct(loader, value_node, (*path, key), marks, problems, source)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(loader, child, (*path, i), marks, problems, source) for i, child in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def validate(model: type[M], data: Any, marks: _Marks, source: str) -> M:
    """Validate `data` as `model`; every error is mapped to its line and described."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(err, data, marks, source) for err in _flatten(exc.errors(include_url=False))]
        raise RuleLoadError(_dedupe(problems)[:MAX_PROBLEMS]) from None


def _flatten(errors: Iterable[Any], prefix: Path_ = ()) -> Iterable[Any]:
    """Errors of a condition's own model arrive nested in one `vigil_nested` error (see
    `rules.model._validate_condition`): bring them back with their full location."""
    for err in errors:
        loc = (*prefix, *err["loc"])
        if err["type"] == "vigil_nested":
            yield from _flatten(err["ctx"]["errors"], loc)
        else:
            yield {**err, "loc": loc}


def _problem(err: Any, data: Any, marks: _Marks, source: str) -> Problem:
    path = _resolve(data, err["loc"])
    ctx = err.get("ctx") or {}
    message = str(err["msg"]).removeprefix("Value error, ")
    key = False
    if err["type"] == "missing":
        path, message = (*path, err["loc"][-1]), f"missing required field {err['loc'][-1]!r}"
    elif err["type"] == "unknown_field":
        path, key = (*path, ctx["field"]), True
    elif err["type"] == "vigil_field":
        path = _resolve(data, (*path, *(int(p) if p.isdigit() else p for p in ctx["field"].split("."))))
        message = ctx["message"]
    elif err["type"] in ("literal_error", "enum") and isinstance(err.get("input"), str | int | float):
        message += f"; got {err['input']!r}"
    line_col = marks.find(path, key=key)
    line, column = line_col or (None, None)
    return Problem(source, line, column, _field(path), message)


def _resolve(data: Any, loc: Iterable[Any]) -> Path_:
    """The path into `data` that `loc` names, skipping pydantic's union tags (they are not keys)."""
    path: list[Any] = []
    node = data
    for seg in loc:
        in_mapping = isinstance(node, dict) and seg in node
        in_list = isinstance(node, list) and isinstance(seg, int) and 0 <= seg < len(node)
        if in_mapping or in_list:
            path.append(seg)
            node = node[seg]
    return tuple(path)


def _field(path: Path_) -> str:
    text = ""
    for seg in path:
        text += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if text else str(seg))
    return text


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[str] = set()
    out = []
    for problem in problems:
        if str(problem) not in seen:
            seen.add(str(problem))
            out.append(problem)
    return out


def read_text(path: str | Path) -> str:
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleLoadError(
            [Problem(str(path), None, None, "", f"cannot read the file: {exc.__class__.__name__}")]
        ) from None


def parse_model(model: type[M], text: str, source: str) -> M:
    data, marks = parse_yaml(text, source)
    return validate(model, data, marks, source)


def parse_ruleset(text: str, source: str = "<string>") -> Ruleset:
    return parse_model(Ruleset, text, source)


def load_ruleset(path: str | Path) -> Ruleset:
    return parse_ruleset(read_text(path), str(path))


Directories = str | Path | Iterable[str | Path]


def ruleset_files(directories: Directories) -> list[Path]:
    """The ruleset files of one or more directories: *.yaml / *.yml directly in each (test cases
    live below), in the order the directories are given."""
    files: list[Path] = []
    for directory in _as_list(directories):
        if not directory.is_dir():
            raise RuleLoadError([Problem(str(directory), None, None, "", "not a directory")])
        files += sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    return files


def _as_list(directories: Directories) -> list[Path]:
    if isinstance(directories, str | Path):
        return [Path(directories)]
    return [Path(d) for d in directories]


def load_rulesets(directory: Directories) -> list[Ruleset]:
    """Every ruleset of one or more directories; raises with all problems of all files at once."""
    rulesets, problems = _load_all(directory)
    if problems:
        raise RuleLoadError(problems)
    return rulesets


def validate_directory(directory: Directories) -> list[Problem]:
    """All problems of a directory of rulesets ([] when valid): for `vigil rules validate DIR`."""
    try:
        return _load_all(directory)[1]
    except RuleLoadError as exc:
        return exc.problems


def _load_all(directory: Directories) -> tuple[list[Ruleset], list[Problem]]:
    rulesets: list[Ruleset] = []
    problems: list[Problem] = []
    owner: dict[str, str] = {}
    for path in ruleset_files(directory):
        try:
            ruleset = load_ruleset(path)
        except RuleLoadError as exc:
            problems += exc.problems
            continue
        for rule in ruleset.rules:
            # Per-patient overrides address rules by id, so an id must mean one rule everywhere.
            if rule.id in owner:
                problems.append(Problem(str(path), None, None, "rules", f"rule id {rule.id!r} is also defined in "
                                        f"{owner[rule.id]}; rule ids must be unique across rulesets"))
            owner[rule.id] = str(path)
        rulesets.append(ruleset)
    return rulesets, problems


def load_test_suite(path: str | Path) -> tuple[TestSuite, Ruleset]:
    """A care-manager test file and the ruleset it names (relative to the test file)."""
    suite = parse_model(TestSuite, read_text(path), str(path))
    return suite, load_ruleset(Path(path).parent / suite.ruleset)
