"""Scoring of PRO questionnaires (PHQ-9, PHQ-2, GAD-7) and the score Observation it produces.

Sources: Kroenke 2001 and NLM LHC-Forms PHQ-9 (codes, bands), Spitzer 2006 (GAD-7), the item-9
guidance (AACN 2020; Simon 2013), the FHIR itemWeight extension and FHIRPath weight() (where
weights live and their lookup order); conventions for senders: docs/rules.md §4. Pure: the caller
passes the QuestionnaireResponse and, when it has it, the Questionnaire it answers.

Fail closed: an unanswered item, or an answer whose weight cannot be found, makes the response
incomplete. An incomplete response gets a total only where the instrument definition allows
prorating (`max_missing`); no instrument here does, because no source we hold gives a prorating
rule. Item answers are always reported, so the PHQ-9 item 9 safety rule runs on its own.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from common.clock import iso, parse_instant
from common.codes import GAD7_ITEMS, LOINC, OBSERVATION_CATEGORY, PHQ9_ITEMS, PRO_TOTALS, vigil_system

WEIGHT_URLS = ("http://hl7.org/fhir/StructureDefinition/itemWeight",
               "http://hl7.org/fhir/StructureDefinition/ordinalValue")
CODESYSTEM_WEIGHT = ("itemWeight", "http://hl7.org/fhir/concept-properties#itemWeight")
# LOINC answer list LL358-3, shared by PHQ-9, PHQ-2 and GAD-7.
LL358_3 = {"LA6568-5": 0, "LA6569-3": 1, "LA6570-1": 2, "LA6571-9": 3}
SCORED_STATUSES = frozenset({"completed", "amended"})
SCORE_SYSTEM = vigil_system("pro-score")
_LOINC_IN_TEXT = re.compile(r"(\d{3,7}-\d)")


class ScoringError(ValueError):
    """A response that cannot be scored at all (not a response, unknown instrument, no subject)."""


@dataclass(frozen=True)
class Instrument:
    key: str
    name: str
    panel: str  # LOINC of the questionnaire
    items: tuple[str, ...]  # item LOINC codes, in item order
    bands: tuple[tuple[int, str], ...]  # (lowest total, band name), ascending
    item_metrics: tuple[str, ...] = ()  # reading metric per item, when items are kept as readings
    max_answer: int = 3
    max_missing: int = 0  # unanswered items allowed for a prorated total
    safety_items: tuple[int, ...] = ()  # item numbers that matter on their own

    @property
    def total_code(self) -> str:
        return PRO_TOTALS[self.key][0]

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(name for _, name in self.bands)

    def band(self, total: float) -> str:
        return [name for low, name in self.bands if total >= low][-1]


INSTRUMENTS: dict[str, Instrument] = {
    # Kroenke 2001 [PHQ9-K]; item 9 > 0 needs its own escalation [AACN-ITEM9][SIMON-2013].
    "phq9": Instrument("phq9", "PHQ-9", "44249-1", PHQ9_ITEMS,
                       ((0, "minimal"), (5, "mild"), (10, "moderate"), (15, "moderately-severe"), (20, "severe")),
                       tuple(f"phq9_item{n}" for n in range(1, 10)), safety_items=(9,)),
    # Kroenke 2003 >=3 positive; Arroll 2010 notes >=2 is more sensitive [ARROLL].
    "phq2": Instrument("phq2", "PHQ-2", "55757-9", PHQ9_ITEMS[:2], ((0, "negative"), (3, "positive"))),
    # Spitzer 2006 cut points 5/10/15 [GAD7-CUT].
    "gad7": Instrument("gad7", "GAD-7", "69737-5", GAD7_ITEMS,
                       ((0, "minimal"), (5, "mild"), (10, "moderate"), (15, "severe")),
                       tuple(f"gad7_item{n}" for n in range(1, 8))),
}


@dataclass(frozen=True)
class ScoreResult:
    instrument: Instrument
    total: int | None  # None when incomplete and not prorated
    items: dict[int, int]  # item number -> weight, for answered and weighted items
    missing: tuple[int, ...]  # item numbers with no usable answer
    prorated: bool = False
    notes: tuple[str, ...] = field(default=())

    @property
    def complete(self) -> bool:
        return not self.missing and self.total is not None

    @property
    def band(self) -> str | None:
        return None if self.total is None else self.instrument.band(self.total)

    def safety_positive(self) -> tuple[int, ...]:
        """Safety items answered above zero (PHQ-9 item 9), whatever the total says."""
        return tuple(n for n in self.instrument.safety_items if self.items.get(n, 0) > 0)


def score_response(response: dict[str, Any], questionnaire: dict[str, Any] | None = None,
                   instrument: str | None = None) -> ScoreResult:
    if response.get("resourceType") != "QuestionnaireResponse":
        raise ScoringError(f"expected a QuestionnaireResponse, got {response.get('resourceType')!r}")
    if response.get("status") == "entered-in-error":
        raise ScoringError("the response is entered-in-error; it must not be scored")
    inst = INSTRUMENTS[instrument] if instrument else identify(response, questionnaire)
    q_items = {i.get("linkId"): i for i in _flatten(questionnaire.get("item", []) if questionnaire else [])}
    notes: list[str] = []
    weights: dict[int, int] = {}
    for item in _flatten(response.get("item", [])):
        number = _item_number(inst, item, q_items.get(item.get("linkId")))
        if number is None or number in weights or not item.get("answer"):
            continue
        weight, problem = _weight(item["answer"][0], q_items.get(item.get("linkId")), questionnaire, inst)
        if problem:
            notes.append(f"item {number}: {problem}")
        elif weight is not None:
            weights[number] = weight
    missing = tuple(n for n in range(1, len(inst.items) + 1) if n not in weights)
    return _total(inst, response, weights, missing, notes)


def identify(response: dict[str, Any], questionnaire: dict[str, Any] | None = None) -> Instrument:
    """Which instrument a response answers: the Questionnaire's code or URL, else the response's
    `questionnaire` canonical, else the item codes it carries."""
    texts = [str(response.get("questionnaire", ""))]
    if questionnaire:
        texts += [str(questionnaire.get("url", ""))]
        texts += [c.get("code", "") for c in questionnaire.get("code", []) if c.get("system") == LOINC]
    for inst in INSTRUMENTS.values():
        if any(inst.panel in text for text in texts):
            return inst
    codes = {m for i in _flatten(response.get("item", [])) for m in _LOINC_IN_TEXT.findall(i.get("linkId", ""))}
    if codes & set(GAD7_ITEMS):
        return INSTRUMENTS["gad7"]
    if codes & set(PHQ9_ITEMS[2:]):
        return INSTRUMENTS["phq9"]
    raise ScoringError("cannot tell which instrument this response answers (PHQ-9, PHQ-2 or GAD-7): "
                       "no known questionnaire code or item codes")


def _total(inst: Instrument, response: dict[str, Any], weights: dict[int, int], missing: tuple[int, ...],
           notes: list[str]) -> ScoreResult:
    status = response.get("status")
    if status not in SCORED_STATUSES:
        notes.append(f"response status is {status!r}: no total is scored; item answers are reported")
        return ScoreResult(inst, None, weights, missing, notes=tuple(notes))
    if not missing:
        return ScoreResult(inst, sum(weights.values()), weights, missing, notes=tuple(notes))
    listed = ", ".join(map(str, missing))
    if len(missing) > inst.max_missing or not weights:
        notes.append(f"incomplete: item(s) {listed} unanswered or unscorable; {inst.name} is not scored "
                     f"with more than {inst.max_missing} missing item(s)")
        return ScoreResult(inst, None, weights, missing, notes=tuple(notes))
    total = math.floor(sum(weights.values()) * len(inst.items) / len(weights) + 0.5)
    notes.append(f"prorated from {len(weights)} of {len(inst.items)} items (item(s) {listed} missing)")
    return ScoreResult(inst, total, weights, missing, prorated=True, notes=tuple(notes))


def _flatten(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for item in items:
        out.append(item)
        out += _flatten(item.get("item", []))
        for answer in item.get("answer", []):
            out += _flatten(answer.get("item", []))
    return out


def _item_number(inst: Instrument, item: dict[str, Any], q_item: dict[str, Any] | None) -> int | None:
    codes = [c.get("code", "") for c in (q_item or {}).get("code", []) if c.get("system") == LOINC]
    codes += _LOINC_IN_TEXT.findall(item.get("linkId", ""))
    for code in codes:
        if code in inst.items:
            return inst.items.index(code) + 1
    return None


def _weight(answer: dict[str, Any], q_item: dict[str, Any] | None, questionnaire: dict[str, Any] | None,
            inst: Instrument) -> tuple[int | None, str | None]:
    """(weight, problem). Lookup order of FHIRPath weight(): the answer's own extension, the matching
    answerOption, a contained ValueSet, a contained CodeSystem, then the LOINC answer list."""
    if "valueInteger" in answer or "valueDecimal" in answer:
        raw = answer.get("valueInteger", answer.get("valueDecimal"))
        return _checked(raw, inst, "integer answer")
    coding = answer.get("valueCoding")
    if not isinstance(coding, dict):
        return None, "answer is neither a coding nor an integer"
    for source, weight in _weight_sources(coding, q_item, questionnaire):
        if weight is not None:
            return _checked(weight, inst, source)
    return None, f"no weight found for answer code {coding.get('code')!r}"


def _weight_sources(
    coding: dict[str, Any], q_item: dict[str, Any] | None, questionnaire: dict[str, Any] | None
) -> Iterator[tuple[str, float | None]]:
    yield "weight on the answer", _ext_weight(coding)
    for option in (q_item or {}).get("answerOption", []):
        if _same(option.get("valueCoding"), coding):
            yield "answerOption weight", _ext_weight(option) or _ext_weight(option.get("valueCoding", {}))
    for res in (questionnaire or {}).get("contained", []):
        if res.get("resourceType") == "ValueSet":
            concepts = [c for inc in res.get("compose", {}).get("include", []) for c in inc.get("concept", [])
                        if _same({"system": inc.get("system"), "code": c.get("code")}, coding)]
            concepts += [c for c in res.get("expansion", {}).get("contains", []) if _same(c, coding)]
            for concept in concepts:
                yield "contained ValueSet weight", _ext_weight(concept)
    for res in (questionnaire or {}).get("contained", []):
        if res.get("resourceType") == "CodeSystem" and res.get("url", coding.get("system")) == coding.get("system"):
            for concept in res.get("concept", []):
                if concept.get("code") == coding.get("code"):
                    yield "contained CodeSystem weight", _property_weight(concept) or _ext_weight(concept)
    if coding.get("system", LOINC) == LOINC:
        yield "LOINC answer list LL358-3", LL358_3.get(coding.get("code", ""))


def _same(option: dict[str, Any] | None, coding: dict[str, Any]) -> bool:
    if not option or option.get("code") != coding.get("code"):
        return False
    return option.get("system") is None or coding.get("system") is None or option["system"] == coding["system"]


def _number(element: dict[str, Any]) -> float | None:
    value = element.get("valueDecimal", element.get("valueInteger"))
    return value if isinstance(value, int | float) else None


def _ext_weight(element: dict[str, Any]) -> float | None:
    for ext in element.get("extension", []):
        if ext.get("url") in WEIGHT_URLS:
            return _number(ext)
    return None


def _property_weight(concept: dict[str, Any]) -> float | None:
    for prop in concept.get("property", []):
        if prop.get("code") in CODESYSTEM_WEIGHT:
            return _number(prop)
    return None


def _checked(raw: Any, inst: Instrument, source: str) -> tuple[int | None, str | None]:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw != int(raw) or not 0 <= raw <= inst.max_answer:
        return None, f"{source} {raw!r} is not a whole number from 0 to {inst.max_answer}; item not scored"
    return int(raw), None


def score_observation(result: ScoreResult, response: dict[str, Any]) -> dict[str, Any]:
    """The score Observation (HL7 PHR IG scored assessments): category survey, the total-score
    LOINC, valueInteger (or dataAbsentReason when incomplete), item answers as components,
    derivedFrom the response. Its id derives from the response, so re-scoring updates it."""
    inst = result.instrument
    if not response.get("id") or not (response.get("subject") or {}).get("reference"):
        raise ScoringError("the response needs an id and a subject reference to be scored")
    try:
        authored = iso(parse_instant(str(response.get("authored", ""))))
    except ValueError:
        raise ScoringError("the response needs `authored` as a date-time with a UTC offset") from None
    response_ref = f"QuestionnaireResponse/{response['id']}"
    key = hashlib.sha256(f"{response_ref}|{inst.key}".encode()).hexdigest()[:32]
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": key,
        "identifier": [{"system": SCORE_SYSTEM, "value": key}],
        "status": "amended" if response.get("status") == "amended" else "final",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "survey"}]}],
        "code": {"coding": [{"system": LOINC, "code": inst.total_code, "display": PRO_TOTALS[inst.key][1]}],
                 "text": PRO_TOTALS[inst.key][1]},
        "subject": {"reference": response["subject"]["reference"]},
        "effectiveDateTime": authored,
        "derivedFrom": [{"reference": response_ref}],
    }
    if result.total is not None:
        obs["valueInteger"] = result.total
        obs["interpretation"] = [{"text": f"{inst.name} {result.band}"}]
    else:
        obs["dataAbsentReason"] = {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "unknown"}],
            "text": "incomplete response: total not scored",
        }
    obs["component"] = [
        {"code": {"coding": [{"system": LOINC, "code": inst.items[n - 1]}]}, "valueInteger": weight}
        for n, weight in sorted(result.items.items())
    ]
    if not obs["component"]:
        del obs["component"]
    if result.notes:
        obs["note"] = [{"text": note} for note in result.notes]
    return obs
