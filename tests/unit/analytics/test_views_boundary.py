"""lowBoundary()/highBoundary() (FHIRPath 3.0): the ranges a value at its precision stands for."""

from __future__ import annotations

from decimal import Decimal

import pytest

from analytics.views.boundary import high_boundary, low_boundary


def test_a_decimal_stands_for_the_values_that_round_to_it() -> None:
    assert low_boundary(Decimal("1.0")) == pytest.approx(0.95)
    assert high_boundary(Decimal("1.0")) == pytest.approx(1.05)
    assert high_boundary(12) == pytest.approx(12.5)


def test_times_and_dates_fill_the_missing_parts() -> None:
    assert low_boundary("10:30") == "10:30:00.000"
    assert high_boundary("10:30:15.5") == "10:30:15.599"
    assert high_boundary("1970-06") == "1970-06-30"
    assert low_boundary("2026-02-03T04:05") == "2026-02-03T04:05:00.000+14:00"


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"), float("-inf")])
def test_a_value_that_is_not_finite_has_no_boundary(value: object) -> None:
    # JSON parsers (Python's among them) accept NaN and Infinity; they round to nothing, so the result is empty.
    assert low_boundary(value) is None
    assert high_boundary(value) is None
