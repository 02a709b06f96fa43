"""Bounds on what rendering one message template may cost: time, loop iterations, sizes.

Jinja2's sandbox keeps a template away from Python internals but not from the CPU or memory
(Jinja docs, "Sandbox": "the sandbox does not protect against ... resource exhaustion"): nested
`range()` loops run for minutes and `'x' * 10**9` builds a gigabyte. `BoundedSandbox` adds, per
render (`RenderLimits`, docs/notifications.md "Template limits"):

- loop iterations: every `{% for %}` iterates through a counting guard (the template's syntax tree
  is rewritten before compilation), and `range()` is capped and counted the same way;
- sizes: `*`, `+`, `%` and `**` are intercepted (`intercepted_binops`, the sandbox's documented
  hook), `~` concatenation is rewritten into a checked join, filters and method calls are checked
  before (width and count arguments, format strings) and after (result length);
- integers: no result over `max_int_bits` (Python refuses to print an int of over 4,300 digits);
- time: a wall-clock deadline checked on every iteration, call, operator and output chunk;
- output: the template is rendered with `generate()`, so rendering stops at `max_output_chars`.

Any bound exceeded raises `RenderLimitExceeded`; `notifications.templates` names the file.
Interception also stops Jinja's compile-time constant folding of those operators, so a bomb in a
template's source cannot run while it is being compiled either.
"""

from __future__ import annotations

import contextvars
import functools
import re
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.runtime import markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import pass_eval_context
from jinja2.visitor import NodeTransformer


@dataclass(frozen=True)
class RenderLimits:
    """Per render of one template file. Shipped templates need a fraction of each."""

    time_s: float = 0.5  # wall clock for the whole render
    max_output_chars: int = 65_536  # the rendered text (an email body is a few KB)
    max_string_chars: int = 65_536  # any string or sequence built while rendering
    max_iterations: int = 10_000  # loop iterations, all loops of the render together
    max_int_bits: int = 4_096  # ~1,233 decimal digits


DEFAULT_LIMITS = RenderLimits()


class RenderLimitExceeded(Exception):
    """A template went over one of its `RenderLimits`; the message says which."""


@dataclass
class _Budget:
    limits: RenderLimits
    deadline: float
    iterations: int = 0

    def tick(self, n: int = 0) -> None:
        self.iterations += n
        if self.iterations > self.limits.max_iterations:
            raise RenderLimitExceeded(f"more than {self.limits.max_iterations} loop iterations")
        if time.monotonic() > self.deadline:
            raise RenderLimitExceeded(f"rendering took longer than {self.limits.time_s:g} s")


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("vigil_template_budget", default=None)
_FORMAT_NUMBER = re.compile(r"\d{5,}")  # candidate widths/precisions in a format string


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """`ImmutableSandboxedEnvironment` whose renders are bounded by `limits` (see module doc)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *args: Any, limits: RenderLimits = DEFAULT_LIMITS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.code_generator_class = _GuardedCodeGenerator
        self.globals["range"] = self._range
        self.globals.pop("lipsum", None)  # generates arbitrary amounts of text; no use in a message
        self.filters = {name: self._guard_filter(f) for name, f in self.filters.items()}

    # -- rendering ------------------------------------------------------------------------
    def render_bounded(self, template: Any, values: Mapping[str, Any]) -> str:
        """`template.render(values)` within the limits; RenderLimitExceeded when over one."""
        budget = _Budget(self.limits, time.monotonic() + self.limits.time_s)
        token = _budget.set(budget)
        try:
            parts: list[str] = []
            size = 0
            for chunk in template.generate(values):
                size += len(chunk)
                if size > self.limits.max_output_chars:
                    raise RenderLimitExceeded(f"output longer than {self.limits.max_output_chars} characters")
                parts.append(chunk)
                budget.tick()
            return "".join(parts)
        finally:
            _budget.reset(token)

    # -- checks ---------------------------------------------------------------------------
    def _tick(self, n: int = 0) -> None:
        budget = _budget.get()
        if budget is not None:  # None: Jinja folding a constant at compile time (static checks only)
            budget.tick(n)

    def _check_size(self, value: Any) -> Any:
        if isinstance(value, str | bytes | list | tuple | dict | set | frozenset) and \
                len(value) > self.limits.max_string_chars:
            raise RenderLimitExceeded(f"a value longer than {self.limits.max_string_chars} items")
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > self.limits.max_int_bits:
            raise RenderLimitExceeded(f"an integer larger than {self.limits.max_int_bits} bits")
        return value

    def _check_arguments(self, args: Iterable[Any]) -> None:
        """Widths and counts that would build more than the limit in one step (`center(10**9)`,
        `'%0*d' % (10**9, 1)`)."""
        for arg in args:
            if _is_int(arg) and abs(arg) > self.limits.max_string_chars:
                raise RenderLimitExceeded(f"an argument of {arg} is over the size limit")

    def _check_format(self, fmt: Any) -> None:
        """A format string with a width or precision over the limit (`'{:>999999999}'`, `'%.9999999f'`)."""
        if isinstance(fmt, str) and any(int(n) > self.limits.max_string_chars for n in _FORMAT_NUMBER.findall(fmt)):
            raise RenderLimitExceeded("a format with a width or precision over the size limit")

    def _check_replace(self, text: Any, args: tuple[Any, ...]) -> None:
        if isinstance(text, str) and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
            count = text.count(args[0]) if args[0] else len(text) + 1
            if len(text) + count * max(0, len(args[1]) - len(args[0])) > self.limits.max_string_chars:
                raise RenderLimitExceeded(f"a replace() result longer than {self.limits.max_string_chars} characters")

    def _check_join(self, separator: Any, items: Any) -> list[Any]:
        """The items of a join, materialized, when the joined text would stay within the limit."""
        # Counted where they come from (a counted range, a guarded loop); strings are size-bounded.
        materialized = list(items)
        sep = len(separator) if isinstance(separator, str) else 0
        if sep * max(0, len(materialized) - 1) + sum(len(i) for i in materialized if isinstance(i, str)) \
                > self.limits.max_string_chars:
            raise RenderLimitExceeded(f"a join longer than {self.limits.max_string_chars} characters")
        return materialized

    # -- sandbox hooks (jinja2.sandbox.SandboxedEnvironment) ------------------------------
    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self._tick()
        limit = self.limits
        if operator == "*":
            seq, n = (left, right) if isinstance(right, int) else (right, left)
            if (
                isinstance(seq, str | bytes | list | tuple)
                and isinstance(n, int)
                and len(seq) * n > limit.max_string_chars
            ):
                raise RenderLimitExceeded(f"a repetition longer than {limit.max_string_chars} items")
            if _is_int(left) and _is_int(right) and left.bit_length() + right.bit_length() > limit.max_int_bits:
                raise RenderLimitExceeded(f"an integer larger than {limit.max_int_bits} bits")
        elif operator == "**" and _is_int(left) and _is_int(right) and right > 0 \
                and max(1, abs(left).bit_length() - 1) * right > limit.max_int_bits and abs(left) > 1:
            raise RenderLimitExceeded(f"an integer larger than {limit.max_int_bits} bits")
        elif operator == "+" and isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple) \
                and len(left) + len(right) > limit.max_string_chars:
            raise RenderLimitExceeded(f"a value longer than {limit.max_string_chars} items")
        elif operator == "%" and isinstance(left, str):
            self._check_format(left)
            self._check_arguments(right if isinstance(right, tuple) else (right,))
        return self._check_size(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        __self._tick()
        if __obj != __self._range:  # range() says itself what is too long, in loop terms
            __self._check_arguments([*args, *kwargs.values()])
        if getattr(__obj, "__name__", None) == "replace":
            __self._check_replace(getattr(__obj, "__self__", None), args)
        if getattr(__obj, "__name__", None) == "join" and isinstance(getattr(__obj, "__self__", None), str) and args:
            args = (__self._check_join(__obj.__self__, args[0]), *args[1:])
        return __self._check_size(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Any:
        if isinstance(value, types.MethodType | types.BuiltinMethodType) and \
                getattr(value, "__name__", None) in ("format", "format_map"):
            self._check_format(getattr(value, "__self__", None))
        return super().wrap_str_format(value)

    def getattr(self, obj: Any, attribute: str) -> Any:
        self._tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        self._tick()
        return super().getitem(obj, argument)

    # -- what the rewritten templates call ------------------------------------------------
    def _range(self, *args: int) -> _CountedRange:
        rng = range(*args)
        if len(rng) > self.limits.max_iterations:
            raise RenderLimitExceeded(f"a range of more than {self.limits.max_iterations} items")
        return _CountedRange(rng, self)

    def guard_iter(self, iterable: Iterable[Any]) -> Iterator[Any]:
        for item in iterable:
            self._tick(1)
            yield item

    @pass_eval_context
    def guarded_concat(self, eval_ctx: Any, *parts: Any) -> str:
        self._tick()
        if sum(len(p) for p in parts if isinstance(p, str)) > self.limits.max_string_chars:
            raise RenderLimitExceeded(f"a value longer than {self.limits.max_string_chars} characters")
        return markup_join(parts) if eval_ctx.autoescape else str_join(parts)

    def _guard_filter(self, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)  # keeps jinja_pass_arg (pass_context / pass_environment markers)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            self._tick()
            plain = [a for a in args if not _is_jinja_object(a)]  # the value, then the filter's arguments
            self._check_arguments([*plain[1:], *kwargs.values()])
            if plain and func.__name__ == "do_format":
                self._check_format(plain[0])
            if plain and func.__name__ == "do_join":
                index = args.index(plain[0])
                separator = plain[1] if len(plain) > 1 else kwargs.get("d", "")
                args = (*args[:index], self._check_join(separator, plain[0]), *args[index + 1:])
            if plain and func.__name__ == "do_replace":
                self._check_replace(str(plain[0]), tuple(plain[1:3]))
            return self._check_size(func(*args, **kwargs))

        return guarded


class _CountedRange:
    """A `range` whose iteration counts against the render's loop budget (also when a filter such
    as `list` or `join` walks it); length, indexing and `in` work as on a range."""

    def __init__(self, rng: range, env: BoundedSandbox) -> None:
        self._range = rng
        self._env = env

    def __iter__(self) -> Iterator[int]:
        return self._env.guard_iter(self._range)

    def __reversed__(self) -> Iterator[int]:
        return self._env.guard_iter(reversed(self._range))

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, index: Any) -> Any:
        item = self._range[index]
        return _CountedRange(item, self._env) if isinstance(item, range) else item

    def __contains__(self, value: Any) -> bool:
        return value in self._range

    def __repr__(self) -> str:
        return repr(self._range)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_jinja_object(value: Any) -> bool:
    # The Environment / EvalContext / Context a filter may be passed first (pass_* decorators).
    return type(value).__module__.startswith("jinja2.") and not isinstance(value, str)


class _Guards(NodeTransformer):
    """`{% for x in it %}` → `{% for x in guard_iter(it) %}`; `a ~ b` → `guarded_concat(a, b)`."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Call(nodes.EnvironmentAttribute("guard_iter"), [node.iter], [], None, None,
                               lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Call(nodes.EnvironmentAttribute("guarded_concat"), list(node.nodes),
                          [], None, None, lineno=node.lineno)


class _GuardedCodeGenerator(CodeGenerator):
    """Compiles the template with `_Guards` applied (the documented `code_generator_class` hook)."""

    def visit_Template(self, node: nodes.Template, frame: Any = None) -> None:
        _Guards().visit(node)
        super().visit_Template(node, frame)


__all__ = ["DEFAULT_LIMITS", "BoundedSandbox", "RenderLimitExceeded", "RenderLimits"]
