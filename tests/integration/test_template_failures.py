"""A broken or hostile customized template never hangs the pipeline or leaves an alert unpaged.

Through the local host with the real ACS SMS SDK (local stand-in): the patient's alert whose
template fails is recorded `not-done` with reason `template_error` naming the file, and the nurse's
escalation, whose customized template fails too, goes out from the shipped template.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fhirstore.paging import search_all
from notifications.dispatch import WITHHELD_SYSTEM
from notifications.templates import TemplateLibrary
from tests.integration.test_sms_ack import (
    DOCTOR_PHONE,
    NURSE_PHONE,
    PATIENT_PHONE,
    care_team,
    crisis,
    texts,
)
from tests.support.acs_server import FakeAcsServer, write_channels_config
from tests.support.pipeline import add_patient, make_host

BOMBS = {
    "alert_high.sms.j2": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "escalation.sms.j2": "{{ 'x' * 10**9 }}",
}


@pytest.fixture
def host(acs: FakeAcsServer, tmp_path: Path, clock):
    config = write_channels_config(acs, tmp_path / "channels.json")
    h = make_host(tmp_path / "data", clock=clock, channels_config=config, org_name="Acme Clinic")
    custom = tmp_path / "templates" / "en"
    custom.mkdir(parents=True)
    for name, source in BOMBS.items():
        (custom / name).write_text(source, encoding="utf-8")
    h.services.messages = TemplateLibrary([tmp_path / "templates"])
    h.acquire()
    s = h.services
    add_patient(s, "p1", phone=PATIENT_PHONE, programs=("hypertension",))
    for pid, phone in (("nurse-1", NURSE_PHONE), ("doctor-1", DOCTOR_PHONE)):
        s.store.update({"resourceType": "Practitioner", "id": pid, "telecom": [{"system": "sms", "value": phone}]})
    care_team(s, "p1", nurse="nurse-1", physician="doctor-1")
    yield h
    h.release()
    s.close()


def test_a_failing_template_is_recorded_and_the_escalation_uses_the_shipped_one(host, acs) -> None:
    s = host.services
    started = time.monotonic()
    task = crisis(host)
    assert time.monotonic() - started < 30  # the bombs were stopped, not run (each would take minutes)

    # The patient got nothing, and the record says why, naming the template file.
    assert texts(acs, PATIENT_PHONE) == []
    [patient_msg] = [c for c in search_all(s.store, "Communication", {})
                     if c.get("recipient", [{}])[0].get("reference") == "Patient/p1"]
    assert patient_msg["status"] == "not-done"
    assert patient_msg["statusReason"]["coding"] == [{"system": WITHHELD_SYSTEM, "code": "template_error"}]
    assert "en/alert_high.sms.j2" in patient_msg["statusReason"]["text"]
    assert "stopped: " in patient_msg["statusReason"]["text"]

    # The nurse was paged with the shipped escalation text (with its ACK code and link).
    [nurse_text] = texts(acs, NURSE_PHONE)
    assert "x" * 100 not in nurse_text and "/api/ack/" in nurse_text
    shipped = TemplateLibrary().render("escalation", "sms", "en", {
        "org_name": "Acme Clinic", "severity": "high", "level": 1, "ack_link": "LINK", "ack_code": "CODE"}).body
    assert nurse_text.split("http")[0] == shipped.split("LINK")[0].split("http")[0]
    [nurse_msg] = [c for c in search_all(s.store, "Communication", {})
                   if c.get("recipient", [{}])[0].get("reference") == "Practitioner/nurse-1"]
    assert nurse_msg["status"] == "completed"
    assert s.store.read("Task", task["id"])["status"] == "requested"  # the chain runs on as usual
