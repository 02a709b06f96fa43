"""De-identification: the anonymizer's format and methods, both shipped profiles, PHI canaries."""

from __future__ import annotations

import json
import stat
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from analytics.deid import Anonymizer, ConfigError, load_config, parse_config
from common.clock import FixedClock
from runtime.cli import main
from tests.unit.analytics.fixtures import CANARIES, observation, patient, seed


def _keyed(profile: str) -> Anonymizer:
    config = load_config(profile)
    config.parameters.update(cryptoHashKey="test-hash-key", dateShiftKey="test-shift-key")
    return Anonymizer(config)


def _assert_no_canary(text: str) -> None:
    for kind, value in CANARIES.items():
        assert value not in text, f"{kind} canary survived de-identification"


def _write_input(tmp_path: Path) -> Path:
    src = tmp_path / "in.ndjson"
    rows = [patient(0), *(observation(i, CANARIES["patient_id"], 70.0 + i) for i in range(5))]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return src


@pytest.mark.parametrize("profile", ["safe-harbor", "research"])
def test_cli_deidentify_leaves_no_canary(tmp_path: Path, data_dir: Path, profile: str) -> None:
    src = _write_input(tmp_path)
    out = tmp_path / "out.ndjson"
    assert main(["--data-dir", str(data_dir), "deidentify", str(src), str(out), "--config", profile]) == 0
    text = out.read_text()
    _assert_no_canary(text)
    assert len(text.splitlines()) == 6
    keys = data_dir / "deid-keys.json"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600


@pytest.mark.parametrize("profile", ["safe-harbor", "research"])
def test_export_deidentified_leaves_no_canary_in_ndjson_or_parquet(
        tmp_path: Path, data_dir: Path, clock: FixedClock, profile: str) -> None:
    seed(data_dir / "fhir.db", clock).close()
    lake = tmp_path / "lake"
    assert main(["--data-dir", str(data_dir), "export", str(lake), "--deidentify", profile, "--no-progress",
                 "--grace", "0"]) == 0
    ndjson = "".join(p.read_text() for p in lake.rglob("*.ndjson"))
    parquet = json.dumps([r for p in lake.rglob("*.parquet") for r in pq.read_table(p).to_pylist()])
    assert ndjson.count("\n") == 33
    _assert_no_canary(ndjson)
    _assert_no_canary(parquet)
    # The date folders are the window's day, not each change's real day.
    days = {p.relative_to(lake / "result").parts[1:4] for p in (lake / "result").rglob("*.ndjson")}
    assert len(days) == 1


def test_research_profile_keeps_loinc_values_units_and_one_offset_per_patient() -> None:
    anon = _keyed("research")
    p = anon.anonymize(patient(0))
    obs = [anon.anonymize(observation(i, CANARIES["patient_id"], 70.5)) for i in range(3)]
    for o, i in zip(obs, range(3), strict=True):
        assert o["code"]["coding"][0] == {"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}
        assert o["valueQuantity"] == {"value": 70.5, "unit": "beats/minute", "system": "http://unitsofmeasure.org",
                                      "code": "/min"}
        assert o["subject"]["reference"] == f"Patient/{p['id']}"
        original = datetime.fromisoformat(observation(i, "x", 1)["effectiveDateTime"])
        shifted = datetime.fromisoformat(o["effectiveDateTime"])
        assert shifted.time() == original.time()  # time of day kept
    offsets = {(datetime.fromisoformat(o["effectiveDateTime"]) - datetime.fromisoformat(
        observation(i, "x", 1)["effectiveDateTime"])).days for i, o in enumerate(obs)}
    birth = (datetime.fromisoformat(p["birthDate"]) - datetime.fromisoformat(CANARIES["birth"])).days
    assert len(offsets) == 1 and offsets == {birth} and birth != 0


def test_safe_harbor_profile_behaves_as_the_anonymizer_sample() -> None:
    anon = _keyed("safe-harbor")
    o = anon.anonymize(observation(1, "pat-1", 70.5))
    assert "valueQuantity" not in o and "note" not in o  # value and Annotation redacted
    assert o["code"]["coding"] == [{"system": "http://loinc.org"}]  # Coding.code and display redacted
    assert o["effectiveDateTime"].endswith("T00:00:00Z")  # shifted, time zeroed
    p = anon.anonymize(patient(1))
    assert p["address"] == [{"postalCode": "98000", "state": "WA"}]
    codes = {s["code"] for s in o["meta"]["security"]}
    assert {"REDACTED", "CRYTOHASH", "ABSTRED"} <= codes


def test_same_keys_same_output_across_instances() -> None:
    a, b = _keyed("research"), _keyed("research")
    assert a.anonymize(observation(2, "pat-1", 70)) == b.anonymize(observation(2, "pat-1", 70))
    assert a.anonymize(patient(1))["id"] != patient(1)["id"]


def _one(rule: dict, **params: object) -> Anonymizer:
    return Anonymizer(parse_config({"fhirPathRules": [rule], "parameters": {"cryptoHashKey": "k", **params}}))


def test_methods_generalize_perturb_substitute_encrypt_and_partial_rules() -> None:
    obs = observation(1, "pat-1", 72)
    gen = _one({"path": "Observation.value.ofType(Quantity).value", "method": "generalize",
                "cases": {"$this < 60": "50", "$this >= 60 and $this < 100": "80"}, "otherValues": "redact"})
    assert gen.anonymize(obs)["valueQuantity"]["value"] == 80
    pert = _one({"path": "Observation.value", "method": "perturb", "span": 10, "rangeType": "fixed", "roundTo": 1})
    v = pert.anonymize(obs)["valueQuantity"]["value"]
    assert 67 <= v <= 77 and v == pert.anonymize(obs)["valueQuantity"]["value"]
    sub = _one({"path": "Observation.subject", "method": "substitute", "replaceWith": {"display": "anon"}})
    assert sub.anonymize(obs)["subject"] == {"display": "anon"}
    enc = _one({"path": "Observation.status", "method": "encrypt"}, encryptKey="0123456789abcdef")
    assert enc.anonymize(obs)["status"] not in ("final", enc.anonymize(obs)["status"])
    zips = _one({"path": "nodesByName('postalCode')", "method": "redact"},
                enablePartialZipCodesForRedact=True, restrictedZipCodeTabulationAreas=["980"])
    assert zips.anonymize(patient(1))["address"][0]["postalCode"] == "00000"
    old = {**patient(1), "birthDate": "1920-05-01"}
    shift = _one({"path": "nodesByType('date')", "method": "dateshift"}, enablePartialDatesForRedact=True)
    assert "birthDate" not in shift.anonymize(old)  # indicates an age over 89: removed, year included


@pytest.mark.parametrize(("config", "fragment"), [
    ({"fhirPathRules": [{"path": "Patient.name", "method": "scramble"}]}, r"fhirPathRules\[0\].*unknown method"),
    ({"fhirPathRules": [{"path": "Patient.name[0]", "method": "redact"}]}, r"fhirPathRules\[0\] \('Patient.name\[0\]'"),
    ({"fhirPathRules": [{"path": "Observation.value", "method": "perturb", "span": -1}]}, r"span must be a number"),
    ({"fhirPathRules": [{"path": "Patient.id", "method": "encrypt"}]}, r"encrypt needs parameters.encryptKey"),
    ({"fhirPathRules": [], "parameters": {"dateShiftScope": "galaxy"}}, r"dateShiftScope"),
    ({"fhirPathRules": [], "parameters": {"cryptoHashKey": 3}}, r"parameters.cryptoHashKey: wrong type"),
])
def test_bad_configuration_names_the_rule_and_problem(config: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_config(config)


def test_a_configuration_that_leaks_is_refused_and_writes_nothing(tmp_path: Path, data_dir: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    weak = tmp_path / "weak.json"
    weak.write_text(json.dumps({"fhirPathRules": [{"path": "Resource.id", "method": "cryptoHash"}]}))
    out = tmp_path / "out.ndjson"
    rc = main(["--data-dir", str(data_dir), "deidentify", str(_write_input(tmp_path)), str(out), "--config", str(weak)])
    assert rc == 1 and not out.exists()
    err = capsys.readouterr().err
    assert "name" in err and "telecom" in err
    _assert_no_canary(err)


def test_export_refuses_to_mix_identified_and_deidentified_data(tmp_path: Path, data_dir: Path,
                                                                 clock: FixedClock) -> None:
    seed(data_dir / "fhir.db", clock).close()
    lake = tmp_path / "lake"
    assert main(["--data-dir", str(data_dir), "export", str(lake), "--deidentify", "--no-progress"]) == 0
    assert main(["--data-dir", str(data_dir), "export", str(lake), "--no-progress"]) == 1
    assert main(["--data-dir", str(data_dir), "export", str(lake), "--deidentify", "research", "--no-progress"]) == 1
    assert main(["--data-dir", str(data_dir), "export", str(lake), "--deidentify", "--no-progress"]) == 0


@pytest.mark.parametrize("profile", ["safe-harbor", "research"])
def test_export_deidentified_leaves_no_canary_in_what_the_console_and_sms_ack_write(
        tmp_path: Path, data_dir: Path, clock: FixedClock, profile: str) -> None:
    """The console's AuditEvents (a resolve note is free text staff type: it can name the patient),
    the SMS ACK lockout's Basic (the sender's number) and the polling cursor's Basic are in the
    store the export reads: none of their PHI may reach the de-identified lake."""
    from console.audit import audit
    from fhirstore.polling_source import Cursor, FhirCursorStore
    from fhirstore.sqlite import SqliteFhirStore
    from notifications.ack_lockout import AckSenderLimit

    phone = "+1" + CANARIES["phone"].replace("-", "")
    store = SqliteFhirStore(data_dir / "fhir.db", clock=clock)
    store.update(patient(0))
    audit(store, clock, actor="Practitioner/nurse-1", action="resolve-alert", kind="update",
          entities=[f"Patient/{CANARIES['patient_id']}"],
          detail=f"treated: called {CANARIES['name']} {CANARIES['family']} at {CANARIES['phone']}")
    AckSenderLimit(store, clock).record_failure(phone, "inbound-1", member="Practitioner/nurse-1")
    FhirCursorStore(store).save("polling", "Observation", Cursor(clock.now(), {"obs-1/1"}))
    store.close()
    lake = tmp_path / "lake"
    assert main(["--data-dir", str(data_dir), "export", str(lake), "--deidentify", profile, "--no-progress",
                 "--grace", "0"]) == 0
    ndjson = "".join(p.read_text() for p in lake.rglob("*.ndjson"))
    assert '"AuditEvent"' in ndjson and '"Basic"' in ndjson
    _assert_no_canary(ndjson)
    assert phone not in ndjson and CANARIES["phone"].replace("-", "") not in ndjson


def test_a_kept_decimal_leaves_the_deidentified_export_and_deidentify_as_written(
        tmp_path: Path, data_dir: Path, clock: FixedClock) -> None:
    """Vigil keeps FHIR decimals as written (22.40 stays 22.40, common/jsonnum.py: FHIR R4 says the
    precision is significant); a profile that keeps the value must not turn it into 22.4."""
    from fhirstore.sqlite import SqliteFhirStore

    store = SqliteFhirStore(data_dir / "fhir.db", clock=clock)
    store.update(patient(0))
    resource = observation(0, CANARIES["patient_id"], 70.0)
    raw = json.dumps(resource).replace('"value": 70.0', '"value": 22.40')
    assert "22.40" in raw
    from common import jsonnum

    store.update(jsonnum.loads(raw))
    store.close()
    lake = tmp_path / "lake"
    assert main(["--data-dir", str(data_dir), "export", str(lake), "--deidentify", "research", "--no-progress",
                 "--grace", "0"]) == 0
    ndjson = "".join(p.read_text() for p in lake.rglob("Observation*.ndjson"))
    assert '"value":22.40' in ndjson
    src = tmp_path / "in.ndjson"
    src.write_text(raw + "\n")
    out = tmp_path / "out.ndjson"
    assert main(["--data-dir", str(data_dir), "deidentify", str(src), str(out), "--config", "research",
                 "--no-check"]) == 0
    assert '"value": 22.40' in out.read_text()
