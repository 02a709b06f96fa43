"""Template expressions: JSONPath (MedTech's Newtonsoft dialect) and JMESPath with MedTech's functions.

Every expression is compiled once, when its template loads (`compile_expression`). Per message
only the compiled form runs.

JSONPath is parsed with `jsonpath-ng` (its extended grammar, which accepts filters) and the parse
tree is then compiled into small Python closures. Two reasons for the second step:

* **Dialect.** Templates were written for Newtonsoft.Json. There `$..[?(@heartrate)]` tests the
  root token itself as well as every descendant (so it matches a flat message), and `@heartrate`
  means `@.heartrate`. A filter on an existence test matches when the member is present, whatever
  its value (even `null` or `false`).
* **Speed.** Normalization must stay within a small factor of `json.loads`; walking jsonpath-ng's
  generic `DatumInContext` objects per message is several times slower than direct dict access.

Parse-tree nodes the compiler does not know (unions, arithmetic, the string extensions...) fall
back to jsonpath-ng's own evaluator for the whole expression, so nothing that parses is refused
(`ingest.templates.jsonpath_compiler`, with the dialect in `ingest.templates.jsonpath_newtonsoft`).

JMESPath uses `jmespath` with the eight custom functions MedTech documents
(`docs/CustomFunctions.md` in microsoft/iomt-fhir): add, subtract, multiply, divide, pow,
insertString, fromUnixTimestamp, fromUnixTimestampMs. Unknown functions and wrong argument counts
are load-time errors, as in MedTech (`ingest.templates.jmespath_functions`); the expression is
compiled to closures with the reference interpreter's semantics (`ingest.templates.jmespath_compiler`).
Both build a `ingest.templates.compiled_expression.CompiledExpression`; the templates of one
collection share per-message work through `ingest.templates.message_cache`.
"""

from __future__ import annotations

from typing import Any

from ingest.templates.compiled_expression import (
    JMESPATH,
    JSONPATH,
    CompiledExpression,
    ExpressionCompileError,
    normalize_language,
)
from ingest.templates.jmespath_compiler import compile_jmespath
from ingest.templates.jsonpath_compiler import compile_jsonpath


def compile_expression(spec: Any, default_language: str = JSONPATH) -> CompiledExpression:
    """Compile a template expression: a string (in `default_language`) or
    `{"value": "...", "language": "JsonPath"|"JmesPath"}`."""
    language = default_language
    if isinstance(spec, dict):
        text = spec.get("value")
        if "language" in spec and spec["language"] is not None:
            language = normalize_language(spec["language"]) or ""
            if not language:
                raise ExpressionCompileError(
                    f"unknown expression language {spec['language']!r} (use JsonPath or JmesPath)"
                )
    else:
        text = spec
    if not isinstance(text, str) or not text.strip():
        raise ExpressionCompileError("an expression must be set (a non-empty string)")
    if language == JMESPATH:
        return compile_jmespath(text)
    return compile_jsonpath(text)
