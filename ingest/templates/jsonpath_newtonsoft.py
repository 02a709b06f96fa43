"""Newtonsoft.Json's JSONPath semantics (the dialect MedTech templates were written for) on
jsonpath-ng's parse tree: `@name` read as `@.name`, plain member/index paths as direct lookups,
filter existence tests, and comparisons where a numeric string equals a number."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from jsonpath_ng import jsonpath as jp
from jsonpath_ng.ext import filter as jp_filter

Evaluator = Callable[[Any, Any], list]  # (current node, root) -> matches
Predicate = Callable[[Any, Any], bool]


def rewrite_at_names(node: Any, in_filter: bool) -> Any:
    """Newtonsoft reads `@name` as `@.name`; jsonpath-ng parses it as a field literally named
    "@name". Rewrite the leftmost such field of every filter operand."""
    if isinstance(node, jp_filter.Filter):
        return jp_filter.Filter([rewrite_at_names(e, True) for e in node.expressions])
    if isinstance(node, jp_filter.Expression):
        value = node.value
        if isinstance(value, jp.JSONPath):
            value = _rewrite_operand(value)
        return jp_filter.Expression(_rewrite_operand(node.target), node.op, value)
    if isinstance(node, jp_filter.Or | jp_filter.And):
        return type(node)([rewrite_at_names(o, True) for o in node.operands])
    if isinstance(node, jp.Child):
        return jp.Child(rewrite_at_names(node.left, in_filter), rewrite_at_names(node.right, in_filter))
    if isinstance(node, jp.Descendants):
        return jp.Descendants(rewrite_at_names(node.left, in_filter), rewrite_at_names(node.right, in_filter))
    return node


def _rewrite_operand(node: Any) -> Any:
    if isinstance(node, jp.Fields) and len(node.fields) == 1 and node.fields[0].startswith("@"):
        name = node.fields[0][1:]
        return jp.This() if not name else jp.Child(jp.This(), jp.Fields(name))
    if isinstance(node, jp.Child):
        return jp.Child(_rewrite_operand(node.left), rewrite_at_names(node.right, True))
    if isinstance(node, jp.Descendants):
        return jp.Descendants(_rewrite_operand(node.left), rewrite_at_names(node.right, True))
    return rewrite_at_names(node, True)


def simple_steps(node: Any) -> list[Any] | None:
    """A chain of single-name fields / single indices from Root or This: compiled to a direct
    lookup loop, the hot path for value expressions like `$.matchedToken.systolic`."""
    steps: list[Any] = []
    while isinstance(node, jp.Child):
        right = node.right
        if isinstance(right, jp.Fields) and len(right.fields) == 1 and right.fields[0] != "*":
            steps.append(right.fields[0])
        elif isinstance(right, jp.Index) and len(right.indices) == 1:
            steps.append(IndexStep(right.indices[0]))
        else:
            return None
        node = node.left
    if isinstance(node, jp.Fields) and len(node.fields) == 1 and node.fields[0] != "*":
        steps.append(node.fields[0])
        node = jp.This()
    if not isinstance(node, jp.Root | jp.This):
        return None
    steps.append(node)
    steps.reverse()
    return steps


class IndexStep:
    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index


def compile_steps(steps: list[Any]) -> Evaluator:
    from_root = isinstance(steps[0], jp.Root)
    keys = steps[1:]

    def evaluate(current: Any, root: Any) -> list:
        node = root if from_root else current
        for key in keys:
            if type(key) is str:
                if type(node) is not dict:
                    return []
                try:
                    node = node[key]
                except KeyError:
                    return []
            else:
                if type(node) is not list:
                    return []
                try:
                    node = node[key.index]
                except IndexError:
                    return []
        return [node]

    return evaluate


def single_getter(keys: list[Any]) -> Callable[[Any], Any]:
    """The value at a plain member/index path, or None: it cannot fail (no wrapper needed)."""
    def get(node: Any) -> Any:
        for key in keys:
            if type(key) is str:
                if type(node) is not dict:
                    return None
                node = node.get(key)
            else:
                if type(node) is not list:
                    return None
                try:
                    node = node[key.index]
                except IndexError:
                    return None
        return node

    return get


def children(node: Any) -> list:
    if type(node) is dict:
        return list(node.values())
    if type(node) is list:
        return node
    return []


def walk_all(start: Any) -> list:
    nodes: list = []
    stack = [start]
    while stack:
        item = stack.pop()
        nodes.append(item)
        if type(item) is dict:
            stack.extend(reversed(list(item.values())))
        elif type(item) is list:
            stack.extend(reversed(item))
    return nodes


def relative_keys(target: Any) -> list[str] | None:
    """`@.a.b` as ["a", "b"] when the target is a plain key path from the current node."""
    steps = simple_steps(target)
    if steps is None or not isinstance(steps[0], jp.This) or not all(type(k) is str for k in steps[1:]):
        return None
    return steps[1:] or None


def exists_fast(keys: list[str]) -> Predicate:
    if len(keys) == 1:
        key = keys[0]
        return lambda item, root: type(item) is dict and key in item
    head, rest = keys[:-1], keys[-1]

    def exists(item: Any, root: Any) -> bool:
        for k in head:
            if type(item) is not dict:
                return False
            item = item.get(k, _MISSING)
        return type(item) is dict and rest in item

    return exists


_MISSING = object()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _coerce_pair(a: Any, b: Any) -> tuple[Any, Any] | None:
    """Newtonsoft compares a numeric string with a number numerically; values of other mixed
    kinds are simply unequal."""
    if _is_number(a) and _is_number(b):
        return a, b
    if isinstance(a, str) and isinstance(b, str):
        return a, b
    try:
        if isinstance(a, str) and _is_number(b):
            return float(a), b
        if _is_number(a) and isinstance(b, str):
            return a, float(b)
    except ValueError:
        return None
    return None


def _ordered(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(a: Any, b: Any) -> bool:
        pair = _coerce_pair(a, b)
        return pair is not None and op(*pair)

    return compare


def equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    pair = _coerce_pair(a, b)
    if pair is None:
        return a == b if type(a) is type(b) else False
    return pair[0] == pair[1]


COMPARATORS: dict[str, Callable[[Any, Any], bool]] = {
    "==": equal,
    "=": equal,
    "!=": lambda a, b: not equal(a, b),
    "<": _ordered(lambda a, b: a < b),
    "<=": _ordered(lambda a, b: a <= b),
    ">": _ordered(lambda a, b: a > b),
    ">=": _ordered(lambda a, b: a >= b),
    "=~": lambda a, b: isinstance(a, str) and re.search(b, a) is not None,
}
