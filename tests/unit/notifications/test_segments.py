"""SMS segment counting per 3GPP TS 23.038 / 23.040."""

from __future__ import annotations

import pytest

from notifications.sms_segments import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    SmsBudget,
    SmsBudgetExceeded,
    check_budget,
    count_segments,
)


def test_alphabet_tables_have_the_3gpp_sizes() -> None:
    assert len(GSM7_BASIC) == 127  # 128 codes minus the escape
    assert len(GSM7_EXTENSION) == 10
    assert {"é", "ñ", "Ñ", "ü", "¿", "¡", "à", "è"} <= GSM7_BASIC
    assert not {"á", "í", "ó", "ú", "ç"} & GSM7_BASIC


@pytest.mark.parametrize("length,segments", [(0, 0), (1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3),
                                             (460, 4)])
def test_gsm7_single_160_then_153_per_part(length: int, segments: int) -> None:
    info = count_segments("a" * length)
    assert (info.encoding, info.segments) == ("GSM-7", segments)


def test_extension_characters_cost_two_septets() -> None:
    assert count_segments("€" * 80).segments == 1  # 160 septets
    info = count_segments("€" * 81)
    assert (info.units, info.segments, info.per_segment) == (162, 2, 153)
    assert count_segments("{[x]}").units == 9


def test_an_escape_pair_is_never_split_across_parts() -> None:
    text = "a" * 152 + "€" + "a" * 152  # 306 septets: naive ceil(306/153) = 2
    assert count_segments(text).segments == 3


@pytest.mark.parametrize("length,segments", [(70, 1), (71, 2), (134, 2), (135, 3)])
def test_ucs2_single_70_then_67_per_part(length: int, segments: int) -> None:
    info = count_segments("á" * length)
    assert (info.encoding, info.segments, info.non_gsm) == ("UCS-2", segments, ("á",))


def test_one_accent_turns_a_gsm_message_into_ucs2() -> None:
    assert count_segments("¿Qué tal? Mañana a las 8.").encoding == "GSM-7"
    info = count_segments("Llámenos hoy, por favor. " * 4)
    assert info.encoding == "UCS-2" and info.non_gsm == ("á",) and info.segments == 2


def test_emoji_take_two_code_units_and_are_not_split() -> None:
    assert count_segments("😀" * 35).segments == 1
    assert count_segments("a" * 66 + "😀" + "a" * 66).segments == 3  # 134 units: naive ceil(134/67) = 2


def test_budget_names_the_limit_and_the_culprit_characters() -> None:
    assert check_budget("a" * 160, SmsBudget(max_segments=1)).segments == 1
    with pytest.raises(SmsBudgetExceeded) as err:
        check_budget("Su cita es mañana, llámenos " + "x" * 60, SmsBudget(max_segments=1, max_chars=None))
    assert "2 UCS-2 segments (limit 1)" in str(err.value) and "'á'" in str(err.value)
    with pytest.raises(SmsBudgetExceeded, match="161 characters"):
        check_budget("a" * 161, SmsBudget(max_segments=3, max_chars=160))
    with pytest.raises(ValueError):
        SmsBudget(max_segments=0)
