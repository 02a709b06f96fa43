"""Every template in ../shared/compat/iomt-fhir loads or is rejected as MedTech's own tests say.

Table-driven over the directory: each file's expected outcome comes from its name
(`...Valid...` / `...Invalid...`), with the few names that do not say it spelled out below. A file
added to the directory without a classification fails `test_every_compat_file_is_classified`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ingest.templates import TemplateError, check_templates, load_device_templates, load_fhir_templates
from tests.support.compat import available

from .conftest import COMPAT, load_json

DEVICE_TYPES = {"collectioncontent", "calculatedcontent", "jsonpathcontent", "iotjsonpathcontent",
                "iotcentraljsonpathcontent"}
FHIR_TYPES = {"collectionfhir", "codevaluefhir"}

# Names that do not say valid/invalid, and what MedTech's tests expect of them.
EXPLICIT: dict[str, bool] = {
    # Missing typeMatchExpression and deviceIdExpression (the "Fake" members do not count).
    "data_CalculatedFunctionContentTemplateValidInvalidAndMissingMembers.json": False,
    "data_CollectionContentTemplateEmpty.json": False,  # templateType ""
    "data_CollectionFhirTemplateEmpty.json": False,  # templateType ""
    "data_CollectionContentTemplateEmptyWithType.json": True,  # an empty collection is valid
    "data_CollectionFhirTemplateEmptyWithType.json": True,
    "data_CollectionContentTemplateHrAndSteps.json": True,
    "data_CollectionContentTemplateHrAndStepsJmesPath.json": True,
    "data_CollectionContentTemplateMixed.json": True,
    "data_CollectionFhirTemplateMixed.json": True,  # despite its name, a device CollectionContent
    "data_CollectionContentTemplateMultipleIotCentralJsonPath.json": True,
    # MedTech loads the valid part of a mixed file and reports the rest; Vigil refuses the file.
    "data_CollectionContentTemplateMixedValidity.json": False,
    "data_CollectionFhirTemplateMixedValidity.json": False,
    # Placeholder template types that only MedTech's mocked factories understand.
    "data_CollectionContentTemplateMultipleMocks.json": False,
    "data_CollectionFhirTemplateMultipleMocks.json": False,
    "data_CodeValueFhirTemplate_CodeableConceptAndStringComponent.json": True,
    "data_CodeValueFhirTemplate_CodeableConceptData.json": True,
    "data_CodeValueFhirTemplate_Components.json": True,
    "data_CodeValueFhirTemplate_Quantity.json": True,
    "data_CodeValueFhirTemplate_SampledData.json": True,
    "data_CodeValueFhirTemplate_String.json": True,
    # The upstream snapshot of this file is an empty object `{}` (no templateType): nothing to load.
    "Fhir.Ingest.UnitTests__data_CodeValueFhirTemplate_Valid.json": False,
    # Valid on their own; invalid only against the device mapping (see the cross-file test below).
    "Fhir.Ingest.Validation.UnitTests__data_CollectionFhirTemplateIncorrectValueNameInvalid.json": True,
    "Fhir.Ingest.Validation.UnitTests__data_CollectionFhirTemplateMissingTypeInvalid.json": True,
}
PAYLOAD = re.compile(r"Payload|mapping-generator__deviceData")
UNCLASSIFIED = "unclassified"


def compat_files() -> list[Path]:
    return sorted(p for p in COMPAT.rglob("*") if p.is_file() and p.suffix in (".json", ".txt"))


def expected(path: Path) -> bool | str | None:
    """True = loads, False = rejected, None = a payload (not a template), else UNCLASSIFIED."""
    if PAYLOAD.search(path.name):
        return None
    if path.name in EXPLICIT:
        return EXPLICIT[path.name]
    short = path.name.split("__", 1)[-1]
    if short in EXPLICIT:
        return EXPLICIT[short]
    if path.parent.name == "sample-templates":
        return True
    if "Invalid" in short:
        return False
    if "Valid" in short:
        return True
    return UNCLASSIFIED


def root_type(path: Path) -> str | None:
    try:
        doc = load_json(path)
    except ValueError:
        return None
    value = doc.get("templateType") if isinstance(doc, dict) else None
    return value.lower() if isinstance(value, str) else None


def load(path: Path) -> None:
    kind = root_type(path)
    if kind in DEVICE_TYPES:
        load_device_templates(path)
    elif kind in FHIR_TYPES:
        load_fhir_templates(path)
    else:
        # No usable root type: both loaders must refuse it, each with its own clear message.
        errors = []
        for loader in (load_device_templates, load_fhir_templates):
            with pytest.raises(TemplateError) as info:
                loader(path)
            errors.append(info.value)
        raise errors[0]


def test_every_compat_file_is_classified(compat_dir: Path) -> None:
    files = compat_files()
    assert len(files) > 60
    unclassified = [p.name for p in files if expected(p) == UNCLASSIFIED]
    assert not unclassified, f"classify these compat files in EXPLICIT: {unclassified}"


TEMPLATE_FILES = [p for p in compat_files() if expected(p) is not None] if available(COMPAT) else []


@pytest.mark.parametrize("path", [p for p in TEMPLATE_FILES if expected(p) is True], ids=lambda p: p.name)
def test_valid_compat_template_loads(path: Path) -> None:
    load(path)


@pytest.mark.parametrize("path", [p for p in TEMPLATE_FILES if expected(p) is False], ids=lambda p: p.name)
def test_invalid_compat_template_is_rejected_with_a_located_message(path: Path) -> None:
    with pytest.raises(TemplateError) as info:
        load(path)
    error = info.value
    assert error.issues, "a TemplateError always lists its issues"
    for issue in error.issues:
        assert issue.file == str(path)
        assert issue.message
        text = str(issue)
        assert str(path) in text
        if issue.index is not None:
            assert f"template[{issue.index}]" in text


def _messages(path_name: str) -> list[str]:
    path = next(p for p in compat_files() if p.name.endswith(path_name))
    with pytest.raises(TemplateError) as info:
        load(path)
    return [str(i) for i in info.value.issues]


def test_collection_invalid_names_each_missing_field_and_index(compat_dir: Path) -> None:
    messages = _messages("Template.UnitTests__data_CollectionContentTemplateInvalid.json")
    # MedTech: DeviceIdExpression, TimestampExpression (template 0), TypeMatchExpression (template 1).
    assert any("template[0] (heartrate) deviceIdExpression" in m for m in messages)
    assert any("template[0] (heartrate) timestampExpression" in m for m in messages)
    assert any("template[1] (bootTime) typeMatchExpression" in m for m in messages)


def test_fhir_collection_invalid_reports_missing_type_name_and_duplicates(compat_dir: Path) -> None:
    messages = _messages("data_CollectionFhirTemplateInvalid.json")
    assert any("template[0]" in m and "typeName" in m and "missing" in m for m in messages)
    assert any("template[1] (steps) value.valueName" in m for m in messages)
    assert any("template[2]" in m and "typeName" in m for m in messages)
    assert any("duplicate template for typeName 'steps'" in m and "template[4]" in m for m in messages)


def test_wrong_root_type_says_what_was_expected(compat_dir: Path) -> None:
    (message,) = _messages("data_InvalidTemplateType.json")
    assert "expected 'CollectionContent', got 'templateType'" in message
    (message,) = _messages("Validation.UnitTests__data_CodeValueFhirTemplateInvalid_MissingFields.json")
    assert "typeName" in message and "missing" in message


def test_no_template_array_and_invalid_json(compat_dir: Path) -> None:
    (message,) = _messages("data_InvalidCollectionContentTemplateWithNoTemplateArray.json")
    assert "expected an array of templates for CollectionContent" in message
    (message,) = _messages("data_InvalidJson.txt")
    assert "not valid JSON" in message and "line 3" in message


def test_missing_value_name_is_located(compat_dir: Path) -> None:
    (message,) = _messages("data_IotJsonPathContentTemplateInvalidMissingValueField.json")
    assert "template[0] (heartrate) values[0].valueName" in message


def test_mixed_validity_keeps_valid_templates_when_not_strict(compat_dir: Path) -> None:
    path = next(p for p in compat_files() if p.name.endswith("data_CollectionContentTemplateMixedValidity.json"))
    templates = load_device_templates(path, strict=False)
    assert [t.index for t in templates.templates] == [0, 1, 3]
    assert [(i.index, i.field) for i in templates.issues] == [(2, "typeMatchExpression")]


def test_single_templates_expose_medtech_fields(compat_dir: Path) -> None:
    path = next(
        p for p in compat_files() if p.name.endswith("data_CalculatedFunctionContentTemplateValidOptional.json")
    )
    (t,) = load_device_templates(path).templates
    assert t.type_name == "heartrate"
    assert (t.type_match.text, t.type_match.language) == ("$..[?(@heartrate)]", "JsonPath")
    assert [e.text for e in (t.device_id, t.patient_id, t.encounter_id, t.correlation_id)] == [
        "$.device", "$.patientId", "$.encounterId", "$.correlationId"]
    assert [(v.name, v.required) for v in t.values] == [("hr", True)]

    path = next(p for p in compat_files() if p.name.endswith("data_CodeValueFhirTemplate_Quantity.json"))
    (f,) = load_fhir_templates(path).templates
    assert f.period_interval == 60
    assert [(c.value.value_type, c.value.code, c.value.unit) for c in f.components] == [
        ("Quantity", "mm[Hg]", "mmHg"), ("Quantity", "mm[Hg]", "mmHg")]


# --- cross-file validation (MedTech's MappingValidator tests) ------------------------------------


def _validation(name: str) -> Path:
    return next(p for p in compat_files() if p.name == f"Fhir.Ingest.Validation.UnitTests__data_{name}")


def test_valid_pair_has_no_cross_file_warnings(compat_dir: Path) -> None:
    report = check_templates(_validation("CollectionContentTemplateHrAndBloodPressureValid.json"),
                             _validation("CollectionFhirTemplateValid.json"))
    assert report.ok
    assert not [w for w in report.warnings if w.code in ("no_fhir_template", "value_not_mapped")]


def test_fhir_mapping_missing_a_type_is_reported_and_its_data_dead_lettered(compat_dir: Path) -> None:
    message = {"systolic": "60", "diastolic": "80", "device": "abc", "date": "2024-05-01T10:00:00Z",
               "patient": "patient123"}
    report = check_templates(_validation("CollectionContentTemplateHrAndBloodPressureValid.json"),
                             _validation("CollectionFhirTemplateMissingTypeInvalid.json"), [message])
    assert report.ok
    warning = next(w for w in report.warnings if w.code == "no_fhir_template")
    assert warning.type_name == "bloodpressure"
    (result,) = report.messages
    assert len(result.measurements) == 1 and not result.observations
    assert [e.reason for e in result.errors] == ["template_not_found"]


def test_fhir_value_name_not_produced_is_reported(compat_dir: Path) -> None:
    message = {"systolic": "60", "diastolic": "80", "device": "abc", "date": "2024-05-01T10:00:00Z",
               "patient": "patient123"}
    report = check_templates(_validation("CollectionContentTemplateHrAndBloodPressureValid.json"),
                             _validation("CollectionFhirTemplateIncorrectValueNameInvalid.json"), [message])
    codes = {(w.code, w.type_name, w.field) for w in report.warnings}
    assert ("value_not_mapped", "bloodpressure", "values[systolic]") in codes
    (result,) = report.messages
    (obs,) = result.observations
    # As in MedTech: only the diastolic component is written.
    assert [c["code"]["text"] for c in obs["component"]] == ["diastolic"]
