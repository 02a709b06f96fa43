"""PHQ-9 / PHQ-2 / GAD-7 scoring: weight lookup order, edge cases, bands, and the score Observation."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from fhir.resources.R4B.observation import Observation

from common.codes import GAD7_ITEMS, PHQ9_ITEMS
from rules.pro import INSTRUMENTS, ScoringError, score_observation, score_response
from rules.readings import readings_from_observation

LOINC = "http://loinc.org"
ANSWERS = ["LA6568-5", "LA6569-3", "LA6570-1", "LA6571-9"]  # 0..3, LOINC answer list LL358-3
ITEM_WEIGHT = "http://hl7.org/fhir/StructureDefinition/itemWeight"
ORDINAL = "http://hl7.org/fhir/StructureDefinition/ordinalValue"


def response(answers: list[Any], items: tuple[str, ...] = PHQ9_ITEMS, *, status: str = "completed",
             questionnaire: str = "http://loinc.org/q/44249-1", coding_system: str = LOINC) -> dict[str, Any]:
    """answers: int -> LOINC answer code of that weight; dict -> the answer as given; None -> unanswered."""
    item_list = []
    for code, answer in zip(items, answers, strict=True):
        if answer is None:
            item_list.append({"linkId": f"/{code}"})
            continue
        value = (
            answer if isinstance(answer, dict) else {"valueCoding": {"system": coding_system, "code": ANSWERS[answer]}}
        )
        item_list.append({"linkId": f"/{code}", "answer": [value]})
    return {"resourceType": "QuestionnaireResponse", "id": "qr1", "status": status, "questionnaire": questionnaire,
            "subject": {"reference": "Patient/p1"}, "authored": "2025-02-01T10:00:00-06:00", "item": item_list}


def custom_questionnaire(option_weights: list[float] | None = None, *, contained: list[dict[str, Any]] | None = None
                         ) -> dict[str, Any]:
    """A PHQ-9 Questionnaire whose answers are codes a0..a3 of a local system (no LOINC fallback)."""
    options = []
    for i in range(4):
        option: dict[str, Any] = {"valueCoding": {"system": "http://example.org/answers", "code": f"a{i}"}}
        if option_weights is not None:
            option["extension"] = [{"url": ORDINAL, "valueDecimal": option_weights[i]}]
        options.append(option)
    items = [{"linkId": f"q{n}", "type": "choice", "code": [{"system": LOINC, "code": code}], "answerOption": options}
             for n, code in enumerate(PHQ9_ITEMS, start=1)]
    return {"resourceType": "Questionnaire", "url": "http://example.org/Questionnaire/phq9", "status": "active",
            "code": [{"system": LOINC, "code": "44249-1"}], "item": items, "contained": contained or []}


def custom_response(codes: list[str], extension_weight: dict[int, float] | None = None) -> dict[str, Any]:
    items = []
    for n, code in enumerate(codes, start=1):
        coding: dict[str, Any] = {"system": "http://example.org/answers", "code": code}
        if extension_weight and n in extension_weight:
            coding["extension"] = [{"url": ITEM_WEIGHT, "valueDecimal": extension_weight[n]}]
        items.append({"linkId": f"q{n}", "answer": [{"valueCoding": coding}]})
    return {"resourceType": "QuestionnaireResponse", "id": "qr2", "status": "completed",
            "questionnaire": "http://example.org/Questionnaire/phq9", "subject": {"reference": "Patient/p1"},
            "authored": "2025-02-01T10:00:00Z", "item": items}


def test_loinc_answer_codes_score_a_complete_phq9() -> None:
    result = score_response(response([1, 2, 3, 0, 1, 2, 3, 0, 0]))
    assert (result.instrument.key, result.total, result.band, result.complete) == ("phq9", 12, "moderate", True)
    assert result.safety_positive() == ()


def test_weight_lookup_order_answer_then_answer_option_then_contained_then_loinc() -> None:
    questionnaire = custom_questionnaire([0, 1, 2, 3])
    codes = ["a1"] * 9
    assert score_response(custom_response(codes), questionnaire).total == 9  # answerOption ordinalValue
    # a weight on the answer coding itself wins over the answerOption
    assert score_response(custom_response(codes, {1: 3}), questionnaire).total == 11


def test_weights_from_a_contained_valueset_and_codesystem() -> None:
    value_set = {"resourceType": "ValueSet", "id": "vs", "status": "active", "compose": {"include": [{
        "system": "http://example.org/answers",
        "concept": [{"code": f"a{i}", "extension": [{"url": ITEM_WEIGHT, "valueDecimal": i}]} for i in range(4)]}]}}
    code_system = {"resourceType": "CodeSystem", "id": "cs", "url": "http://example.org/answers", "status": "active",
                   "content": "complete", "concept": [
                       {"code": f"a{i}", "property": [{"code": "itemWeight", "valueDecimal": i}]} for i in range(4)]}
    codes = ["a2"] * 9
    assert score_response(custom_response(codes), custom_questionnaire(contained=[value_set])).total == 18
    assert score_response(custom_response(codes), custom_questionnaire(contained=[code_system])).total == 18


def test_answer_without_any_weight_is_unscorable_and_says_so() -> None:
    result = score_response(custom_response(["a1"] * 9), custom_questionnaire())
    assert result.total is None and result.missing == tuple(range(1, 10))
    assert "no weight found for answer code 'a1'" in result.notes[0]


def test_weight_outside_0_to_3_is_rejected_not_summed() -> None:
    """A stored FSH revision of the SDC CodeSystem had 4 for "Nearly every day" (LOINC 44249-1 and 69737-5, and the SDC
    itemWeight extension)."""
    result = score_response(custom_response(["a3"] * 9), custom_questionnaire([0, 1, 2, 4]))
    assert result.total is None
    assert "answerOption weight 4 is not a whole number from 0 to 3" in result.notes[0]


def test_integer_answers() -> None:
    answers = [{"valueInteger": v} for v in (0, 1, 2, 3, 0, 1, 2, 3, 1)]
    result = score_response(response(answers))
    assert result.total == 13 and result.safety_positive() == (9,)
    bad = score_response(response([{"valueInteger": 5}, *answers[1:]]))
    assert bad.total is None and 1 in bad.missing and "integer answer 5" in bad.notes[0]


def test_incomplete_phq9_is_not_scored_but_item_9_is_reported() -> None:
    result = score_response(response([3, 3, 3, None, 3, 3, 3, 3, 2]))
    assert result.total is None and result.band is None and not result.complete
    assert result.missing == (4,) and result.items[9] == 2 and result.safety_positive() == (9,)
    assert any("incomplete" in n and "not scored with more than 0 missing" in n for n in result.notes)
    obs = score_observation(result, response([3, 3, 3, None, 3, 3, 3, 3, 2]))
    Observation.model_validate(obs)
    assert "valueInteger" not in obs and obs["dataAbsentReason"]["coding"][0]["code"] == "unknown"
    metrics = {r.metric: r.value for r in readings_from_observation(obs)}
    assert "phq9_total" not in metrics and metrics["phq9_item9"] == 2


def test_prorating_where_an_instrument_allows_it() -> None:
    lenient = dataclasses.replace(INSTRUMENTS["phq9"], max_missing=1)
    original = INSTRUMENTS["phq9"]
    INSTRUMENTS["phq9"] = lenient
    try:
        result = score_response(response([2, 2, 2, None, 2, 2, 2, 2, 1]))
    finally:
        INSTRUMENTS["phq9"] = original
    assert result.prorated and result.total == 17  # 15 * 9 / 8 = 16.875
    assert "prorated from 8 of 9 items (item(s) 4 missing)" in result.notes


def test_in_progress_response_reports_items_but_no_total() -> None:
    result = score_response(response([0, 0, 0, 0, 0, 0, 0, 0, 1], status="in-progress"))
    assert result.total is None and result.items[9] == 1
    assert "response status is 'in-progress'" in result.notes[0]


def test_entered_in_error_and_unknown_instruments_are_refused() -> None:
    with pytest.raises(ScoringError, match="entered-in-error"):
        score_response(response([0] * 9, status="entered-in-error"))
    unknown = response([0] * 9, questionnaire="http://example.org/q/other")
    for item in unknown["item"]:
        item["linkId"] = "x"
    with pytest.raises(ScoringError, match="cannot tell which instrument"):
        score_response(unknown)


def test_instrument_identified_from_items_and_nested_groups() -> None:
    nested = response([1] * 7, GAD7_ITEMS, questionnaire="")
    nested["item"] = [{"linkId": "group", "item": nested["item"]}]
    result = score_response(nested)
    assert (result.instrument.key, result.total, result.band) == ("gad7", 7, "mild")


@pytest.mark.parametrize(
    ("instrument", "total", "band"),
    [("phq9", 0, "minimal"), ("phq9", 4, "minimal"), ("phq9", 5, "mild"), ("phq9", 9, "mild"),
     ("phq9", 10, "moderate"), ("phq9", 14, "moderate"), ("phq9", 15, "moderately-severe"),
     ("phq9", 19, "moderately-severe"), ("phq9", 20, "severe"), ("phq9", 27, "severe"),
     ("gad7", 4, "minimal"), ("gad7", 5, "mild"), ("gad7", 10, "moderate"), ("gad7", 15, "severe"),
     ("gad7", 21, "severe"), ("phq2", 2, "negative"), ("phq2", 3, "positive")],
)
def test_bands(instrument: str, total: int, band: str) -> None:
    assert INSTRUMENTS[instrument].band(total) == band


def test_phq2() -> None:
    result = score_response(response([2, 1], PHQ9_ITEMS[:2], questionnaire="http://loinc.org/q/55757-9"))
    assert (result.instrument.key, result.total, result.band) == ("phq2", 3, "positive")


def test_score_observation_shape_and_identity() -> None:
    qr = response([1, 2, 3, 0, 1, 2, 3, 0, 1])
    obs = score_observation(score_response(qr), qr)
    Observation.model_validate(obs)
    assert obs["code"]["coding"][0]["code"] == "44261-6" and obs["valueInteger"] == 13
    assert obs["category"][0]["coding"][0]["code"] == "survey"
    assert obs["derivedFrom"] == [{"reference": "QuestionnaireResponse/qr1"}]
    assert obs["effectiveDateTime"] == "2025-02-01T16:00:00.000Z" and obs["status"] == "final"
    assert obs["interpretation"][0]["text"] == "PHQ-9 moderate"
    again = score_observation(score_response(qr), qr)
    assert again["id"] == obs["id"] and again["identifier"] == obs["identifier"]  # re-scoring updates, not adds
    amended = score_observation(score_response({**qr, "status": "amended"}), {**qr, "status": "amended"})
    assert amended["status"] == "amended" and amended["id"] == obs["id"]
    readings = {r.metric: r.value for r in readings_from_observation(obs)}
    assert readings["phq9_total"] == 13 and readings["phq9_item9"] == 1 and len(readings) == 10


def test_score_observation_needs_subject_and_offset_time() -> None:
    qr = response([0] * 9)
    result = score_response(qr)
    with pytest.raises(ScoringError, match="subject"):
        score_observation(result, {**qr, "subject": None})
    with pytest.raises(ScoringError, match="UTC offset"):
        score_observation(result, {**qr, "authored": "2025-02-01T10:00:00"})
