"""Template expressions: the Newtonsoft JSONPath dialect and MedTech's JMESPath functions.

Function expectations are those of microsoft/iomt-fhir's Microsoft.Health.Expressions.UnitTests.
"""

from __future__ import annotations

import pytest

from ingest.templates.errors import MappingFailure
from ingest.templates.expressions import ExpressionCompileError, compile_expression

LONG_MAX = 2**63 - 1
LONG_MIN = -(2**63)


def jp(expr: str, data):
    return compile_expression(expr).find(data)


def jm(expr: str, data=None):
    return compile_expression(expr, "JmesPath").value(data if data is not None else {})


# --- JSONPath -----------------------------------------------------------------------------------

DOC = {"Body": {"heartrate": "60", "nothing": None, "off": False,
                "data": [{"systolic": "120", "diastolic": "80", "n": 1}, {"systolic": "122", "n": 2}]},
       "Properties": {"iothub-creation-time-utc": "2019-01-30T22:45:02Z"}}


def test_descendant_filter_matches_the_start_token_itself() -> None:
    """Newtonsoft tests the root too: a flat message matches `$..[?(@heartrate)]`."""
    flat = {"heartrate": "60"}
    assert jp("$..[?(@heartrate)]", flat) == [flat]
    assert jp("$..[?(@Body.heartrate)]", DOC) == [DOC]


def test_at_name_means_at_dot_name_and_presence_counts_even_for_null_or_false() -> None:
    assert jp("$..[?(@nothing)]", DOC) == [DOC["Body"]]
    assert jp("$..[?(@off)]", DOC) == [DOC["Body"]]
    assert jp("$..[?(@.heartrate)]", DOC) == [DOC["Body"]]
    assert jp("$..[?(@absent)]", DOC) == []


def test_conjunction_disjunction_and_document_order() -> None:
    body = DOC["Body"]
    assert jp("$..[?(@systolic && @diastolic)]", DOC) == [body["data"][0]]
    assert jp("$..[?(@systolic)]", DOC) == body["data"]
    assert jp("$..[?(@diastolic || @heartrate)]", DOC) == [body, body["data"][0]]


def test_comparisons_coerce_numeric_strings_like_newtonsoft() -> None:
    data = DOC["Body"]["data"]
    assert jp("$..[?(@systolic == 122)]", DOC) == [data[1]]
    assert jp("$..[?(@systolic > 121)].n", DOC) == [2]
    assert jp("$..[?(@n >= 1)].n", DOC) == [1, 2]
    assert jp("$.Body.data[?(@.systolic != '120')].n", DOC) == [2]
    assert jp("$..[?(@unit == 'inches')]", {"a": {"unit": "inches"}, "b": {"unit": "cm"}}) == [{"unit": "inches"}]


def test_paths_indexes_wildcards_and_hyphenated_names() -> None:
    assert jp("$.Properties.iothub-creation-time-utc", DOC) == ["2019-01-30T22:45:02Z"]
    assert jp("$.Body.data[*].n", DOC) == [1, 2]
    assert jp("$.Body.data[-1].n", DOC) == [2]
    assert jp("$.Body.data[5].n", DOC) == []
    assert jp("$..n", DOC) == [1, 2]
    assert jp("$['Body']['heartrate']", DOC) == ["60"]


def test_value_selecting_several_results_is_an_expression_error() -> None:
    with pytest.raises(MappingFailure) as info:
        compile_expression("$..n").value(DOC)
    assert info.value.reason == "expression_error"
    assert "selected 2 values" in info.value.detail


def test_unsupported_syntax_falls_back_to_jsonpath_ng() -> None:
    # A union is not compiled to closures; jsonpath-ng evaluates it.
    assert sorted(jp("$.Body.data[0].['systolic','diastolic']", DOC)) == ["120", "80"]


@pytest.mark.parametrize("bad", ["", "   ", "$..[?(", "$.[", None, 5])
def test_bad_jsonpath_fails_at_compile_time(bad) -> None:
    with pytest.raises(ExpressionCompileError):
        compile_expression(bad)


def test_expression_object_form_and_language() -> None:
    expr = compile_expression({"value": "Body.heartrate", "language": "JmesPath"})
    assert (expr.language, expr.value(DOC)) == ("JmesPath", "60")
    expr = compile_expression({"value": "Body.heartrate"}, "JmesPath")  # no language: the default
    assert (expr.language, expr.value(DOC)) == ("JmesPath", "60")
    with pytest.raises(ExpressionCompileError, match="unknown expression language"):
        compile_expression({"value": "x", "language": "XPath"})


# --- JMESPath -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "left", "right", "result"),
    [
        ("add", 0, 0, 0), ("add", -1, 100, 99), ("add", 0, LONG_MAX, LONG_MAX), ("add", 0, LONG_MIN, LONG_MIN),
        ("add", -1.0, 10.5, 9.5), ("add", -1, 10.5, 9.5),
        ("subtract", 100, 1, 99), ("subtract", 10.5, 1, 9.5),
        ("multiply", 3, 4, 12), ("multiply", 2.5, 2, 5.0),
        ("divide", 100, 25, 4), ("divide", 100, -1, -100), ("divide", 0, LONG_MAX, 0), ("divide", 100, 25.0, 4.0),
        ("pow", 2, 10, 1024), ("pow", 4, 0.5, 2.0),
    ],
)
def test_arithmetic_functions(fn, left, right, result) -> None:
    value = jm(f"{fn}(left, right)", {"left": left, "right": right})
    assert value == result
    assert type(value) is type(result)  # integers stay integers, as MedTech's tests check


def test_divide_that_is_not_exact_is_not_truncated() -> None:
    assert jm("divide(`7`, `2`)") == 3.5


@pytest.mark.parametrize(
    ("expr", "data"),
    [
        ("divide(left, right)", {"left": 100, "right": 0}),
        ("add(left, right)", {"left": "bad", "right": 100}),
        ("add(left, right)", {"left": [1, 2], "right": 100}),
        ("add(left, right)", {"left": {"value": 1}, "right": 100}),
        ("add(left, right)", {"left": LONG_MAX, "right": 1}),  # does not fit a 64-bit integer
        ("multiply(left, right)", {"left": 1e308, "right": 10.0}),  # not finite
        ("insertString(original, toInsert, pos)", {"original": "myString", "toInsert": "!!", "pos": 9}),
        ("insertString(original, toInsert, pos)", {"original": "ppy", "toInsert": "ha", "pos": -1}),
        ("insertString(original, toInsert, pos)", {"original": 6, "toInsert": "value", "pos": 0}),
        ("insertString(original, toInsert, pos)", {"original": "text", "toInsert": 123, "pos": 0}),
        ("insertString(original, toInsert, pos)", {"original": "text", "toInsert": "x", "pos": 1.5}),
        ("fromUnixTimestamp(timestamp)", {"timestamp": "badData"}),
    ],
)
def test_function_errors_are_expression_errors_for_that_message(expr, data) -> None:
    with pytest.raises(MappingFailure) as info:
        jm(expr, data)
    assert info.value.reason == "expression_error"
    assert expr in info.value.detail
    # The detail names the expression, never the payload's values.
    assert "badData" not in info.value.detail and "myString" not in info.value.detail


@pytest.mark.parametrize(
    ("original", "insert", "pos", "expected"),
    [("myString", "!!", 8, "myString!!"), ("ppy", "ha", 0, "happy"), ("suess", "cc", 2, "success")],
)
def test_insert_string(original, insert, pos, expected) -> None:
    assert jm("insertString(o, i, p)", {"o": original, "i": insert, "p": pos}) == expected
    assert jm("insertString(o, i, length(o))", {"o": "sample ", "i": "text"}) == "sample text"


@pytest.mark.parametrize(
    ("expr", "value", "expected"),
    [
        ("fromUnixTimestamp(t)", 0, "1970-01-01T00:00:00Z"),
        ("fromUnixTimestamp(t)", 1625677200, "2021-07-07T17:00:00Z"),
        ("fromUnixTimestamp(t)", -1, "1969-12-31T23:59:59Z"),
        ("fromUnixTimestampMs(t)", 1625677200123, "2021-07-07T17:00:00.123000Z"),
    ],
)
def test_unix_timestamps(expr, value, expected) -> None:
    assert jm(expr, {"t": value}) == expected


def test_google_fit_nanoseconds_pipeline() -> None:
    expr = "fromUnixTimestampMs(floor(divide(to_number(endTimeNanos), `1000000`)))"
    assert jm(expr, {"endTimeNanos": "1574159699023000000"}) == "2019-11-19T10:34:59.023000Z"


@pytest.mark.parametrize(
    "expr",
    ["add()", "add(left)", "add(left, right, up)", "insertString(a, b)", "fromUnixTimestamp(a, b)", "nope(a)",
     "to_array(", "[?"],
)
def test_unknown_functions_and_wrong_arity_fail_at_load_time(expr) -> None:
    with pytest.raises(ExpressionCompileError):
        compile_expression(expr, "JmesPath")


def test_ordering_a_string_against_a_number_fails_like_the_interpreter() -> None:
    with pytest.raises(MappingFailure) as info:
        jm("a > b", {"a": "x", "b": 1})
    assert info.value.reason == "expression_error"


@pytest.mark.parametrize(
    ("expr", "data", "expected"),
    [
        ("to_array(@)[?heartrate]", {"heartrate": "60"}, [{"heartrate": "60"}]),
        ("to_array(Body)[?type == 'a'].v", {"Body": [{"type": "a", "v": 1}, {"type": "b", "v": 2}]}, [1]),
        ("a.b || a.c", {"a": {"b": 0, "c": 5}}, [0]),  # 0 is true in JMESPath
        ("a.b || a.c", {"a": {"b": "", "c": 5}}, [5]),
        ("a == `1` && 'yes' || 'no'", {"a": True}, ["no"]),  # true is not 1
        ("a > b", {"a": None, "b": 1}, []),  # ordering only between numbers or strings: null
        ("!a", {"a": 0}, [False]),
        ("a[*].b", {"a": [{"b": 1}, {"c": 2}, {"b": 3}]}, [1, 3]),
        ("a[]", {"a": [[1, 2], 3]}, [1, 2, 3]),
        ("[a, b]", {"a": 1, "b": 2}, [1, 2]),
        ("join('T', [d, t])", {"d": "2024-01-15", "t": "07:30:00"}, ["2024-01-15T07:30:00"]),
        ("sort_by(a, &n)[0].n", {"a": [{"n": 2}, {"n": 1}]}, [1]),  # interpreter fallback
    ],
)
def test_jmespath_semantics_match_the_reference_interpreter(expr, data, expected) -> None:
    import jmespath

    from ingest.templates.jmespath_functions import JMES_OPTIONS

    assert compile_expression(expr, "JmesPath").find(data) == expected
    reference = jmespath.search(expr, data, options=JMES_OPTIONS)
    as_list = [] if reference is None else [r for r in reference if r is not None] if isinstance(reference, list) \
        else [reference]
    assert as_list == expected


_GROUPED_AND = ("to_array(Body)[?contains(`[\"bp\", \"BP\"]`, type) && (values.pulse != null || values.hr != null)]")


@pytest.mark.parametrize(
    "body",
    [
        {"type": "bp", "values": {"pulse": 61}},
        {"type": "bp", "values": {"systolic": 120}},
        [{"type": "bp", "values": {}}, {"type": "BP", "values": {"hr": 0}}, {"type": "bp", "values": {"hr": 3}}],
        [{"type": "hr", "values": {"hr": 1}}, {"type": 5}, "text", {"values": {"hr": 1}}],
        {"type": "weight"},
        7,
    ],
)
def test_a_discriminating_filter_with_more_conditions_matches_the_interpreter(body) -> None:
    import jmespath

    from ingest.templates.jmespath_functions import JMES_OPTIONS
    from ingest.templates.message_cache import message_cache

    expression = compile_expression(_GROUPED_AND, "JmesPath")
    assert expression.group is not None  # grouped by `type` once per message, then `&& ...` per group
    data = {"Body": body}
    reference = jmespath.search(_GROUPED_AND, data, options=JMES_OPTIONS)
    expected = [] if reference is None else reference
    assert expression.find(data) == expected
    with message_cache():
        assert expression.find(data) == expected
