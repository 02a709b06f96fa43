"""The rule paths of the anonymizer's configuration, resolved to nodes of one resource.

Supported, as the anonymizer documents them (docs/FHIR-anonymization.md, "FHIR path"):

- ``Type.a.b`` from a resource type, or ``Resource.`` / ``DomainResource.`` for any resource; a choice name
  (``Observation.value``) matches every ``value[x]``;
- ``nodesByType('T')`` and ``nodesByName('n')``, optionally followed by more steps;
- type filters ``X as T``, ``(X as T).y`` and ``.ofType(T)``;
- ``.where(<FHIRPath>)``, evaluated with fhirpathpy on each candidate node (a Vigil extension: the research
  profile keeps only LOINC codings with it).

Anything else is refused when the configuration loads, naming the rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from fhirpathpy.engine.nodes import ResourceNode

from analytics.deid.typed import Location, Node, choice_match, is_a
from analytics.views.fhirpath import Expression, FhirPathError, to_json

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FUNC = re.compile(r"(nodesByType|nodesByName|ofType|where)\((.*)\)$", re.S)
_STRING_ARG = re.compile(r"^'([^']*)'$")


class PathError(ValueError):
    """A rule path outside the supported forms."""


@dataclass
class Tree:
    resource_type: str
    nodes: list[Node]

    def __post_init__(self) -> None:
        self.children: dict[Location, list[Node]] = {}
        for node in self.nodes:
            parent = node.loc[:-2] if isinstance(node.loc[-1], int) else node.loc[:-1]
            self.children.setdefault(parent, []).append(node)

    def descendants(self, node: Node) -> list[Node]:
        n = len(node.loc)
        return [d for d in self.nodes if len(d.loc) > n and d.loc[:n] == node.loc]


Step = Callable[[Tree, list[Node] | None], list[Node]]


@dataclass(frozen=True)
class CompiledPath:
    """A rule path, compiled: its steps run in order on a resource's tree. ``root_type`` is the resource type
    the path starts from (``None`` for ``Resource.``, ``nodesByType(...)`` and the like), so the engine can
    skip rules that cannot match a resource."""

    steps: tuple[Step, ...]
    root_type: str | None

    def __call__(self, tree: Tree, _: list[Node] | None = None) -> list[Node]:
        current: list[Node] | None = None
        for step in self.steps:
            current = step(tree, current)
            if not current:
                return []
        return current or []


def _split_top(text: str, sep: str = ".") -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    depth, quote = 0, False
    for ch in text:
        if ch == "'":
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
        if ch == sep and depth == 0 and not quote:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _strip_as(text: str) -> tuple[str, str | None]:
    m = re.match(r"^(.*\S)\s+as\s+([A-Za-z]+)$", text.strip(), re.S)
    if m and m.group(1).count("(") == m.group(1).count(")"):
        return m.group(1), m.group(2)
    return text.strip(), None


def compile_path(path: str) -> CompiledPath:
    """A function from a resource's tree to the nodes ``path`` selects."""
    if not isinstance(path, str) or not path.strip():
        raise PathError("path must be a non-empty string")
    body, as_type = _strip_as(path)
    steps = _split_top(body)
    if not all(s.strip() for s in steps):
        raise PathError(f"{path!r} has an empty step")
    compiled: list[Step] = []
    first = steps[0].strip()
    root_type = first if _IDENT.fullmatch(first) and first not in ("Resource", "DomainResource") else None
    if first.startswith("(") and first.endswith(")"):
        compiled.append(_group(compile_path(first[1:-1])))
    else:
        fn = _FUNC.match(first)
        if fn and fn.group(1) in ("nodesByType", "nodesByName"):
            compiled.append(_by(fn.group(1), _string_arg(fn.group(2), path)))
        elif _IDENT.fullmatch(first):
            compiled.append(_root(first))
        else:
            raise PathError(f"{path!r}: cannot start with {first!r}")
    for raw in steps[1:]:
        compiled.append(_step(raw.strip(), path))
    if as_type:
        compiled.append(_of_type(as_type))
    return CompiledPath(tuple(compiled), root_type)


def _string_arg(arg: str, path: str) -> str:
    m = _STRING_ARG.match(arg.strip())
    if not m:
        raise PathError(f"{path!r}: expected one quoted name, got ({arg})")
    return m.group(1)


def _group(inner: CompiledPath) -> Step:
    return lambda tree, _cur: inner(tree, None)


def _by(kind: str, arg: str) -> Step:
    if kind == "nodesByType":
        return lambda tree, _cur: [n for n in tree.nodes if n.type == arg]
    return lambda tree, _cur: [n for n in tree.nodes if n.name == arg]


def _root(name: str) -> Step:
    def step(tree: Tree, _cur: list[Node] | None) -> list[Node]:
        if name in ("Resource", "DomainResource") or name == tree.resource_type:
            return [Node((), tree.resource_type, tree.resource_type, tree.resource_type, None)]
        return []

    return step


def _children(tree: Tree, nodes: list[Node], name: str) -> list[Node]:
    out: list[Node] = []
    for node in nodes:
        out.extend(c for c in tree.children.get(node.loc, []) if choice_match(c.name, name))
    return out


def _of_type(type_name: str) -> Step:
    return lambda tree, cur: [n for n in (cur or []) if is_a(n.type, type_name)]


def _where(expr_text: str, path: str) -> Step:
    try:
        expr = Expression(expr_text, f"where() in {path!r}")
    except FhirPathError as exc:
        raise PathError(str(exc)) from exc

    def step(tree: Tree, cur: list[Node] | None) -> list[Node]:
        out: list[Node] = []
        for node in cur or []:
            focus = ResourceNode.create_node(node.value, node.lookup or node.type) if node.value is not None else None
            if focus is None:
                continue
            result = [to_json(v) for v in expr.nodes(focus, {})]
            if result == [True]:
                out.append(node)
        return out

    return step


def _step(raw: str, path: str) -> Step:
    fn = _FUNC.match(raw)
    if fn and fn.group(1) == "ofType":
        return _of_type(fn.group(2).strip())
    if fn and fn.group(1) == "where":
        return _where(fn.group(2), path)
    if _IDENT.fullmatch(raw):
        return lambda tree, cur: _children(tree, cur or [], raw)
    raise PathError(f"{path!r}: unsupported step {raw!r}")
