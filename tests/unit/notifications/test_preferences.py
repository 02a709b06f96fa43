"""Recipients from FHIR resources, and quiet hours in the recipient's own zone across DST changes."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from pathlib import Path

import pytest

from fhirstore.sqlite import SqliteFhirStore
from notifications.preferences import (
    PREFERENCES_EXT,
    PreferenceDefaults,
    PreferenceError,
    QuietHours,
    at_local_time,
    next_allowed_send,
    patient_recipient,
    send_at,
    staff_recipients,
)

QUIET = QuietHours(time(21), time(8))
LA, NY, MADRID = "America/Los_Angeles", "America/New_York", "Europe/Madrid"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- quiet hours across DST, in the patient's zone (the server runs in UTC) ----------------------

def test_outside_quiet_hours_sends_now() -> None:
    now = utc(2026, 3, 7, 20, 0)  # 12:00 PST
    assert next_allowed_send(now, LA, QUIET) == now


def test_evening_before_spring_forward_waits_for_8am_daylight_time() -> None:
    # Sat 7 Mar 2026 21:30 PST; clocks go 02:00 -> 03:00 on Sun 8 Mar. 08:00 PDT = 15:00Z (not 16:00Z).
    assert next_allowed_send(utc(2026, 3, 8, 5, 30), LA, QUIET) == utc(2026, 3, 8, 15, 0)
    # Early morning after the change: 07:59 PDT waits one minute.
    assert next_allowed_send(utc(2026, 3, 8, 14, 59), LA, QUIET) == utc(2026, 3, 8, 15, 0)


def test_evening_before_fall_back_waits_for_8am_standard_time() -> None:
    # Sat 31 Oct 2026 21:30 PDT; clocks go 02:00 -> 01:00 on Sun 1 Nov. 08:00 PST = 16:00Z.
    assert next_allowed_send(utc(2026, 11, 1, 4, 30), LA, QUIET) == utc(2026, 11, 1, 16, 0)
    # In the repeated hour itself (01:30 PST, second time round) it is still quiet.
    assert next_allowed_send(utc(2026, 11, 1, 9, 30), LA, QUIET) == utc(2026, 11, 1, 16, 0)


def test_a_european_patient_on_their_own_dst_date() -> None:
    # Europe changes on 25 Oct 2026 (US a week later): 08:00 CET = 07:00Z.
    assert next_allowed_send(utc(2026, 10, 24, 20, 0), MADRID, QUIET) == utc(2026, 10, 25, 7, 0)
    # The same UTC instant is 16:00 in New York: no waiting there.
    assert next_allowed_send(utc(2026, 10, 24, 20, 0), NY, QUIET) == utc(2026, 10, 24, 20, 0)


def test_quiet_hours_ending_inside_the_skipped_hour_end_when_the_clocks_jump() -> None:
    quiet = QuietHours(time(23), time(2, 30))
    assert next_allowed_send(utc(2026, 3, 8, 5, 0), NY, quiet) == utc(2026, 3, 8, 7, 0)  # 03:00 EDT
    assert at_local_time(date(2026, 11, 1), time(1, 30), NY) == utc(2026, 11, 1, 5, 30)  # first 01:30


def test_daytime_quiet_window_and_none() -> None:
    lunch = QuietHours.parse("12:00-13:00")
    assert next_allowed_send(utc(2026, 6, 1, 16, 30), NY, lunch) == utc(2026, 6, 1, 17, 0)
    assert QuietHours.parse("none") is None and next_allowed_send(utc(2026, 6, 1, 3), NY, None) == utc(2026, 6, 1, 3)
    with pytest.raises(PreferenceError, match="21:00-08:00"):
        QuietHours.parse("9pm to 8am")


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
