"""JSONPath template expressions: parsed with `jsonpath-ng` (its extended grammar, which accepts
filters), then compiled into small Python closures with Newtonsoft's semantics
(`ingest.templates.jsonpath_newtonsoft`). Walking jsonpath-ng's generic `DatumInContext` objects per
message is several times slower than direct dict access. Parse-tree nodes the compiler does not
know (unions, arithmetic, the string extensions...) fall back to jsonpath-ng's own evaluator for
the whole expression, so nothing that parses is refused."""

from __future__ import annotations

import re
from typing import Any

from jsonpath_ng import jsonpath as jp
from jsonpath_ng.exceptions import JsonPathLexerError, JsonPathParserError
from jsonpath_ng.ext import filter as jp_filter
from jsonpath_ng.ext import parse as jsonpath_parse

from ingest.templates.compiled_expression import JSONPATH, CompiledExpression, ExpressionCompileError, Unsupported
from ingest.templates.jsonpath_newtonsoft import (
    COMPARATORS,
    Evaluator,
    Predicate,
    children,
    compile_steps,
    equal,
    exists_fast,
    relative_keys,
    rewrite_at_names,
    simple_steps,
    single_getter,
    walk_all,
)
from ingest.templates.message_cache import containers


def compile_jsonpath(text: str) -> CompiledExpression:
    try:
        tree = jsonpath_parse(text)
    except (JsonPathParserError, JsonPathLexerError, Exception) as exc:  # ply raises plain Exception too
        raise ExpressionCompileError(f"JSONPath expression {text!r} does not parse: {exc}") from None
    tree = rewrite_at_names(tree, in_filter=False)
    scan = None
    if isinstance(tree, jp.Descendants) and isinstance(tree.left, jp.Root) and isinstance(tree.right, jp_filter.Filter):
        keys = [relative_keys(e.target) if isinstance(e, jp_filter.Expression) and e.op is None else None
                for e in tree.right.expressions]
        first = keys[0] if keys else None
        if first is not None and all(k is not None for k in keys):
            scan = (first[0], _compile_filter(tree.right))
    single = None
    steps = simple_steps(tree)
    if steps is not None and isinstance(steps[0], jp.Root | jp.This):
        single = single_getter(steps[1:])
    try:
        evaluator = _compile_node(tree)

        def find(data: Any) -> list:
            return evaluator(data, data)

    except Unsupported:
        fallback = tree

        def find(data: Any) -> list:
            return [match.value for match in fallback.find(data)]

    return CompiledExpression(text, JSONPATH, find, scan, single)


def _compile_node(node: Any) -> Evaluator:
    steps = simple_steps(node)
    if steps is not None:
        return compile_steps(steps)

    if isinstance(node, jp.Root):
        return lambda current, root: [root]
    if isinstance(node, jp.This):
        return lambda current, root: [current]
    if isinstance(node, jp.Fields):
        names = node.fields
        if "*" in names:
            return lambda current, root: list(children(current))

        def fields(current: Any, root: Any) -> list:
            if type(current) is not dict:
                return []
            return [current[n] for n in names if n in current]

        return fields
    if isinstance(node, jp.Wildcard):
        return lambda current, root: list(children(current))
    if isinstance(node, jp.Index):
        indices = node.indices

        def index(current: Any, root: Any) -> list:
            if type(current) is not list:
                return []
            size = len(current)
            return [current[i] for i in indices if -size <= i < size]

        return index
    if isinstance(node, jp.Slice):
        start, end, step = node.start, node.end, node.step

        def slice_(current: Any, root: Any) -> list:
            if type(current) is not list:
                return []
            return current[start:end:step]

        return slice_
    if isinstance(node, jp_filter.Filter):
        test = _compile_filter(node)

        def filter_children(current: Any, root: Any) -> list:
            return [child for child in children(current) if test(child, root)]

        return filter_children
    if isinstance(node, jp.Child):
        left = _compile_node(node.left)
        right = _compile_node(node.right)

        def child(current: Any, root: Any) -> list:
            out: list = []
            for item in left(current, root):
                out.extend(right(item, root))
            return out

        return child
    if isinstance(node, jp.Descendants):
        return _compile_descendants(node)
    raise Unsupported(type(node).__name__)


def _compile_descendants(node: jp.Descendants) -> Evaluator:
    left = _compile_node(node.left)
    right_node = node.right
    if isinstance(right_node, jp_filter.Filter):
        # Newtonsoft: `..[?(...)]` tests the starting token itself and every descendant.
        test = _compile_filter(right_node)
        scalars = _filter_can_match_scalars(right_node)

        def scan_filter(current: Any, root: Any) -> list:
            out: list = []
            for start in left(current, root):
                nodes = walk_all(start) if scalars or not (type(start) is dict or type(start) is list) \
                    else containers(start)
                out += [item for item in nodes if test(item, root)]
            return out

        return scan_filter

    right = _compile_node(right_node)

    def scan(current: Any, root: Any) -> list:
        out: list = []
        for start in left(current, root):
            stack = [start]
            while stack:
                item = stack.pop()
                out.extend(right(item, root))
                if type(item) is dict:
                    stack.extend(reversed([c for c in item.values() if type(c) in (dict, list)]))
                elif type(item) is list:
                    stack.extend(reversed([c for c in item if type(c) in (dict, list)]))
        return out

    return scan


def _filter_can_match_scalars(node: jp_filter.Filter) -> bool:
    """Only a filter that tests `@` itself (`[?(@ > 5)]`) can match a scalar."""

    def targets_this(expr: Any) -> bool:
        if isinstance(expr, jp_filter.Expression):
            return isinstance(expr.target, jp.This)
        if isinstance(expr, jp_filter.Or | jp_filter.And):
            return any(targets_this(o) for o in expr.operands)
        return True

    return any(targets_this(e) for e in node.expressions)


def _compile_filter(node: jp_filter.Filter) -> Predicate:
    keys = [relative_keys(e.target) if isinstance(e, jp_filter.Expression) and e.op is None else None
            for e in node.expressions]
    names = tuple(k[0] for k in keys if k is not None and len(k) == 1)
    if len(names) == len(keys):
        # The common `[?(@a && @b)]`: members present on the node.
        if len(names) == 1:
            only = names[0]
            return lambda item, root: type(item) is dict and only in item
        return lambda item, root: type(item) is dict and all(n in item for n in names)
    tests = [_compile_predicate(e) for e in node.expressions]
    if len(tests) == 1:
        return tests[0]
    return lambda item, root: all(t(item, root) for t in tests)


def _compile_predicate(expr: Any) -> Predicate:
    if isinstance(expr, jp_filter.Or):
        operands = [_compile_predicate(o) for o in expr.operands]
        return lambda item, root: any(t(item, root) for t in operands)
    if isinstance(expr, jp_filter.And):
        operands = [_compile_predicate(o) for o in expr.operands]
        return lambda item, root: all(t(item, root) for t in operands)
    if not isinstance(expr, jp_filter.Expression):
        raise Unsupported(type(expr).__name__)
    op = expr.op
    keys = relative_keys(expr.target)
    if op is None and keys is not None:
        return exists_fast(keys)
    if op in ("==", "=") and keys is not None and len(keys) == 1 and not isinstance(expr.value, jp.JSONPath):
        key, literal = keys[0], expr.value
        return lambda item, root: type(item) is dict and key in item and equal(item[key], literal)
    target = _compile_node(expr.target)
    if op is None:  # existence: present, whatever the value (Newtonsoft semantics)
        return lambda item, root: bool(target(item, root))
    if op == "!":
        return lambda item, root: not target(item, root)
    compare = COMPARATORS.get(op)
    if compare is None:
        raise Unsupported(f"operator {op}")
    if isinstance(expr.value, jp.JSONPath):
        other = _compile_node(expr.value)

        def compare_paths(item: Any, root: Any) -> bool:
            rights = other(item, root)
            return any(compare(a, b) for a in target(item, root) for b in rights)

        return compare_paths
    literal = expr.value
    if op == "=~" and isinstance(literal, str):
        pattern = re.compile(literal)
        return lambda item, root: any(isinstance(v, str) and pattern.search(v) for v in target(item, root))
    return lambda item, root: any(compare(v, literal) for v in target(item, root))
