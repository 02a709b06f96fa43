"""Code systems and the metric vocabulary shared by ingest and rules.

Sources: the FHIR R4 Vital Signs profile, https://hl7.org/fhir/R4/observation-vitalsigns.html (its LOINC codes and
UCUM units).
"""

from __future__ import annotations

from dataclasses import dataclass

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
VITAL_SIGNS_PROFILE = "http://hl7.org/fhir/StructureDefinition/vitalsigns"


def vigil_system(kind: str) -> str:
    """The identifier system for resources Vigil creates (DESIGN §5: `urn:vigil:<kind>`)."""
    return f"urn:vigil:{kind}"


@dataclass(frozen=True)
class Metric:
    """One measurable thing, as care managers name it in rules."""

    alias: str
    loinc: str
    display: str
    unit: str  # canonical UCUM code every comparison uses
    unit_display: str
    category: str  # observation-category code
    panel: str | None = None  # LOINC of the panel when this metric is a component


# FHIR R4 Vital Signs profile, https://hl7.org/fhir/R4/observation-vitalsigns.html. BP values live only in components
# of the 85354-9 panel.
METRICS: dict[str, Metric] = {
    m.alias: m
    for m in (
        Metric("systolic_bp", "8480-6", "Systolic blood pressure", "mm[Hg]", "mmHg", "vital-signs", "85354-9"),
        Metric("diastolic_bp", "8462-4", "Diastolic blood pressure", "mm[Hg]", "mmHg", "vital-signs", "85354-9"),
        Metric("heart_rate", "8867-4", "Heart rate", "/min", "beats/minute", "vital-signs"),
        Metric("resp_rate", "9279-1", "Respiratory rate", "/min", "breaths/minute", "vital-signs"),
        Metric("spo2", "2708-6", "Oxygen saturation in Arterial blood", "%", "%", "vital-signs"),
        Metric("body_temp", "8310-5", "Body temperature", "Cel", "C", "vital-signs"),
        Metric("body_weight", "29463-7", "Body weight", "kg", "kg", "vital-signs"),
        Metric("body_height", "8302-2", "Body height", "cm", "cm", "vital-signs"),
        Metric("bmi", "39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", "kg/m2", "vital-signs"),
        Metric(
            "glucose", "41653-7", "Glucose [Mass/volume] in Capillary blood by Glucometer",
            "mg/dL", "mg/dL", "laboratory",
        ),
        Metric("steps", "41950-7", "Number of steps in 24 hour Measured", "/d", "steps/day", "activity"),
    )
}

# PRO instruments (LOINC 44249-1 and 69737-5, and the SDC itemWeight extension). Item LOINC codes in questionnaire
# order; item metrics are
# components of the score Observation whose code is the total-score LOINC (their `panel`).
PHQ9_ITEMS = ("44250-9", "44255-8", "44259-0", "44254-1", "44251-7", "44258-2", "44252-5", "44253-3", "44260-8")
GAD7_ITEMS = ("69725-0", "68509-9", "69733-4", "69734-2", "69735-9", "69689-8", "69736-7")
PRO_TOTALS = {"phq9": ("44261-6", "PHQ-9 total score"), "phq2": ("55758-7", "PHQ-2 total score"),
              "gad7": ("70274-6", "GAD-7 total score")}
SCORE_UNIT = "{score}"


def _pro_metrics() -> list[Metric]:
    out = [
        Metric(f"{key}_total", code, display, SCORE_UNIT, "score", "survey")
        for key, (code, display) in PRO_TOTALS.items()
    ]
    for key, name, items in (("phq9", "PHQ-9", PHQ9_ITEMS), ("gad7", "GAD-7", GAD7_ITEMS)):
        total = PRO_TOTALS[key][0]
        out += [Metric(f"{key}_item{n}", code, f"{name} item {n}", SCORE_UNIT, "score", "survey", total)
                for n, code in enumerate(items, start=1)]
    return out


METRICS.update({m.alias: m for m in _pro_metrics()})

# Other LOINC codes that carry the same quantity as a metric (FHIR R4 Vital Signs profile,
# https://hl7.org/fhir/R4/observation-vitalsigns.html): SpO2 by pulse
# oximetry, and glucose by specimen/method (mass and molar; the unit, not the code, decides the scale).
ALTERNATE_CODES: dict[str, str] = {
    "59408-5": "spo2",
    "2339-0": "glucose", "2345-7": "glucose", "15074-8": "glucose", "99504-3": "glucose", "105272-9": "glucose",
}

BP_PANEL = ("85354-9", "Blood pressure panel with all children optional")
SPO2_PULSE_OX = ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry")

# LOINC codes of the R4 Vital Signs value set that Vigil writes (FHIR R4 Vital Signs profile, https://hl7.org/fhir/R4/observation-vitalsigns.html).
VITAL_SIGN_CODES = frozenset(
    {"85353-1", "85354-9", "8480-6", "8462-4", "8867-4", "9279-1", "2708-6", "59408-5", "8310-5",
     "29463-7", "8302-2", "39156-5"}
)

METRIC_BY_LOINC: dict[str, Metric] = {m.loinc: m for m in METRICS.values()}

# Canonical UCUM unit per LOINC code, for codes ingest may see beyond the rule metrics above
# (FHIR R4 Vital Signs profile, https://hl7.org/fhir/R4/observation-vitalsigns.html; HealthKit/Google Fit codes in
# docs/templates.md). Glucose: the code decides
# mass (mg/dL) or molar (mmol/L); never read one as the other.
CANONICAL_UNIT_BY_LOINC: dict[str, str] = {
    **{m.loinc: m.unit for m in METRICS.values()},
    "59408-5": "%",  # SpO2 by pulse oximetry
    "40443-4": "/min",  # resting heart rate
    "80404-7": "ms",  # heart rate variability (SDNN)
    "2339-0": "mg/dL",  # glucose, blood (mass)
    "2345-7": "mg/dL",  # glucose, serum/plasma (mass)
    "15074-8": "mmol/L",  # glucose, blood (molar)
    "99504-3": "mg/dL",  # CGM, interstitial (mass)
    "105272-9": "mmol/L",  # CGM, interstitial (molar)
    "41981-2": "kcal",  # active energy burned
    "9052-2": "kcal",  # dietary energy
    "55423-8": "{steps}",  # steps, unspecified period
}

# Heart-rate-like codes: a blood-pressure component must never carry one of these.
HEART_RATE_CODES = frozenset({"8867-4", "40443-4"})
SYSTOLIC_BP = "8480-6"
DIASTOLIC_BP = "8462-4"
