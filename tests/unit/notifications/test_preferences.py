"""Recipients from FHIR resources (patients, care-team staff), and when their messages may go."""

from __future__ import annotations

from datetime import UTC, datetime, time
from pathlib import Path

import pytest

from fhirstore.sqlite import SqliteFhirStore
from notifications.preferences import (
    PREFERENCES_EXT,
    PreferenceDefaults,
    PreferenceError,
    patient_recipient,
    send_at,
    staff_recipients,
)
from notifications.quiet_hours import QuietHours

QUIET = QuietHours(time(21), time(8))
LA, NY, MADRID = "America/Los_Angeles", "America/New_York", "Europe/Madrid"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_reminders_wait_escalations_to_staff_and_urgent_patient_alerts_do_not() -> None:
    night = utc(2026, 3, 8, 7, 0)  # 23:00 PST
    patient = patient_recipient({"resourceType": "Patient", "id": "p1"}, PreferenceDefaults(time_zone=LA))
    assert send_at(patient, category="reminder", urgent=False, now=night) == utc(2026, 3, 8, 15, 0)
    assert send_at(patient, category="alert", urgent=False, now=night) == utc(2026, 3, 8, 15, 0)
    assert send_at(patient, category="alert", urgent=True, now=night) == night
    assert send_at(patient, category="consent", urgent=False, now=night) == night
    staff = patient.__class__(ref="Practitioner/n1", kind="staff", contacts=(), locale="en", time_zone=LA,
                              quiet_hours=QUIET)
    assert send_at(staff, category="alert", urgent=False, now=night) == night


# -- patients ----------------------------------------------------------------------------------

def test_patient_contacts_language_zone_and_preferences() -> None:
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "telecom": [
            {"system": "email", "value": "maria@example.org", "rank": 2},
            {"system": "phone", "value": "(555) 555-0100", "use": "home", "rank": 1},  # landline: not texted
            {"system": "phone", "value": "555-555-0101", "use": "mobile", "rank": 1},
            {"system": "sms", "value": "+1 555 555 0102", "use": "old"},
            {"system": "sms", "value": "+15555550103", "period": {"end": "2026-01-01"}},
        ],
        "communication": [
            {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en"}]}},
            {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "es-MX"}]}, "preferred": True},
        ],
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/timezone", "valueCode": "America/Chicago"}],
    }
    r = patient_recipient(patient, now=utc(2026, 11, 20, 12))
    assert [(c.channel, c.address) for c in r.contacts] == [("sms", "+15555550101"), ("email", "maria@example.org")]
    assert (r.locale, r.time_zone, r.quiet_hours) == ("es-MX", "America/Chicago", QUIET)
    assert "maria" not in repr(r) and "0101" not in repr(r)

    patient["extension"].append({"url": PREFERENCES_EXT, "extension": [
        {"url": "channel-order", "valueString": "email,sms"},
        {"url": "quiet-hours", "valueString": "22:00-07:00"},
        {"url": "locale", "valueCode": "en-US"},
    ]})
    r = patient_recipient(patient, now=utc(2026, 11, 20, 12))
    assert [c.channel for c in r.contacts] == ["email", "sms"]
    assert (r.locale, str(r.quiet_hours)) == ("en-US", "22:00-07:00")
    assert r.contacts_for(["sms"])[0].address == "+15555550101"


def test_bad_preferences_are_explained() -> None:
    bad = {"resourceType": "Patient", "id": "p2", "extension": [
        {"url": PREFERENCES_EXT, "extension": [{"url": "channel-order", "valueString": "pager,sms"}]}]}
    with pytest.raises(PreferenceError, match="Patient/p2.*pager"):
        patient_recipient(bad)
    unknown_zone = {"resourceType": "Patient", "id": "p3",
                    "extension": [{"url": "urn:vigil:time-zone", "valueCode": "Mars/Olympus"}]}
    assert patient_recipient(unknown_zone, PreferenceDefaults(time_zone=NY)).time_zone == NY
    with pytest.raises(PreferenceError, match="IANA"):
        PreferenceDefaults(time_zone="EST5")


# -- staff -------------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path, clock):
    s = SqliteFhirStore(tmp_path / "fhir.db", clock=clock)
    practitioners = {
        "n1": [{"system": "phone", "value": "+15555551001", "use": "mobile"}],
        "d1": [{"system": "email", "value": "doc@clinic.example"}, {"system": "sms", "value": "+15555551002"}],
        "oc-old": [{"system": "sms", "value": "+15555551003"}],
        "oc1": [{"system": "sms", "value": "+15555551004"}],
        "r1": [{"system": "sms", "value": "+15555551005"}],
    }
    for pid, telecom in practitioners.items():
        s.update({"resourceType": "Practitioner", "id": pid, "telecom": telecom,
                  "communication": [{"coding": [{"code": "es"}]}] if pid == "d1" else []})
    s.update({"resourceType": "PractitionerRole", "id": "pr-d1", "practitioner": {"reference": "Practitioner/d1"},
              "telecom": [{"system": "sms", "value": "+15555552002", "use": "work"}]})
    s.update({"resourceType": "PractitionerRole", "id": "roster-oc", "active": True,
              "practitioner": {"reference": "Practitioner/r1"},
              "code": [{"coding": [{"system": "urn:vigil:care-team-role", "code": "on-call"}]}]})
    s.update({"resourceType": "CareTeam", "id": "ct1", "status": "active", "subject": {"reference": "Patient/p1"},
              "participant": [
                  {"role": [{"coding": [{"system": "http://snomed.info/sct", "code": "224535009"}]}],
                   "member": {"reference": "Practitioner/n1"}},
                  {"role": [{"text": "Physician"}], "member": {"reference": "PractitionerRole/pr-d1"}},
                  {"role": [{"coding": [{"code": "on-call"}]}], "member": {"reference": "Practitioner/oc-old"},
                   "period": {"start": "2026-11-19T08:00:00Z", "end": "2026-11-20T08:00:00Z"}},
                  {"role": [{"coding": [{"code": "on-call"}]}], "member": {"reference": "Practitioner/oc1"},
                   "period": {"start": "2026-11-20T08:00:00Z"}},
              ]})
    yield s
    s.close()


def test_staff_by_role_from_the_care_team(store, clock) -> None:
    staff = staff_recipients(store, "Patient/p1", ["nurse", "physician", "on-call"], now=clock.now())
    assert [(r.ref, r.role) for r in staff] == [
        ("Practitioner/n1", "nurse"), ("Practitioner/d1", "physician"), ("Practitioner/oc1", "on-call")]
    nurse, doctor, _ = staff
    assert nurse.contacts[0].address == "+15555551001" and nurse.quiet_hours is None
    # The role's work number comes before the practitioner's own contacts.
    assert [c.address for c in doctor.contacts] == ["+15555552002", "+15555551002", "doc@clinic.example"]
    assert doctor.locale == "es"


def test_a_role_missing_from_the_care_team_falls_back_to_the_roster(store, clock) -> None:
    store.update({"resourceType": "CareTeam", "id": "ct2", "status": "active", "subject": {"reference": "Patient/p2"},
                  "participant": [{"role": [{"text": "nurse"}], "member": {"reference": "Practitioner/n1"}}]})
    staff = staff_recipients(store, "Patient/p2", ["on-call"], now=clock.now())
    assert [r.ref for r in staff] == ["Practitioner/r1"]
    assert staff_recipients(store, "Patient/p2", ["on-call"], now=clock.now(), roster_fallback=False) == []
    with pytest.raises(PreferenceError, match="unknown care-team role 'janitor'"):
        staff_recipients(store, "Patient/p2", ["janitor"])
