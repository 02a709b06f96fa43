"""What the composition root builds once from settings: the message templates, the reminder schedule
and the preference defaults every handler shares.

What an operator relies on: their own template directory changes the texts patients get, their
own reminder file is what the sweep runs, a patient whose resource names no language or time zone
gets the clinic's, and a wrong value stops the start with the setting's name instead of failing
on the first message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from handlers.acs_events import handle_acs_event
from handlers.reminder_schedule import ReminderConfigError
from handlers.reminders import run_reminder_sweep
from notifications.preferences import patient_recipient
from notifications.templates import TemplateLibrary
from runtime.bootstrap import acs_deps, messaging, reminder_deps
from runtime.settings import SettingsError
from tests.support.pipeline import add_patient, make_host

PHONE = "+15550100001"  # add_patient's default number


def _help_text(message_id: str) -> dict[str, Any]:
    at = "2026-11-20T14:00:00Z"
    return {"id": f"evt-{message_id}", "subject": "/phonenumber/15550100001",
            "eventType": "Microsoft.Communication.SMSReceived", "eventTime": at, "dataVersion": "1.0",
            "data": {"messageId": message_id, "from": "15550100001", "to": "18005550100", "message": "HELP",
                     "receivedTimestamp": at}}


def test_a_template_directory_setting_changes_what_patients_receive(tmp_path: Path) -> None:
    custom = tmp_path / "templates"
    (custom / "en").mkdir(parents=True)
    (custom / "en" / "consent_help.sms.j2").write_text(
        "{{ org_name }} help desk: call {{ contact_phone }}. Reply STOP to opt out.")
    host = make_host(tmp_path / "data", message_templates_path=(custom,))
    try:
        s = host.services
        add_patient(s, "p1")
        outcome = handle_acs_event(_help_text("Incoming_1"), acs_deps(s))
        assert outcome.action == "help" and outcome.reply is not None and outcome.reply.status == "sent"
        texts = [m["body"] for m in s.channels["sms"].provider.messages() if m.get("to") == PHONE]
        assert texts == [f"{s.settings.org_name} help desk: call {s.settings.contact_phone}. Reply STOP to opt out."]
        # Templates the directory does not have still come from the shipped ones.
        context = {"org_name": "X", "contact_phone": "1"}
        assert (s.messages.render("consent_stop", "sms", "en", context).body
                == TemplateLibrary().render("consent_stop", "sms", "en", context).body)
    finally:
        host.services.close()


def test_a_missing_template_directory_stops_the_start_by_name(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"VIGIL_MESSAGE_TEMPLATES_PATH: template directory .*nowhere"):
        make_host(tmp_path / "data", message_templates_path=(tmp_path / "nowhere",))


def test_the_reminder_file_setting_is_the_schedule_the_sweep_runs(tmp_path: Path) -> None:
    schedule = tmp_path / "reminders.yaml"
    schedule.write_text('programs:\n  hypertension:\n    reminders:\n'
                        '      - {id: bp-evening, kind: reading, metric: systolic_bp, at: "20:30"}\n')
    host = make_host(tmp_path / "data", reminders_file=schedule)
    try:
        s = host.services
        deps = reminder_deps(s)
        assert deps.schedule is s.reminders  # read once, at start
        assert [r.id for r in deps.schedule.programs["hypertension"].reminders] == ["bp-evening"]
        assert set(deps.schedule.programs) == {"hypertension"}
        add_patient(s, "p1", programs=("hypertension",))
        report = run_reminder_sweep(deps)  # DAYTIME is before 20:30 UTC: nothing is due yet
        assert report.patients == 1 and report.not_due == 1 and report.sent == 0
    finally:
        host.services.close()


def test_a_broken_reminder_file_stops_the_start_with_its_line(tmp_path: Path) -> None:
    schedule = tmp_path / "reminders.yaml"
    schedule.write_text('programs:\n  hypertension:\n    reminders:\n'
                        '      - {id: bp, kind: reading, metric: bp_sys, at: "08:00"}\n')
    with pytest.raises(ReminderConfigError, match=r"reminders\.yaml:4: .*metric: unknown metric 'bp_sys'"):
        make_host(tmp_path / "data", reminders_file=schedule)


def test_patients_who_name_no_language_or_zone_get_the_clinic_defaults(tmp_path: Path) -> None:
    host = make_host(tmp_path / "data", default_locale="es_mx", default_time_zone="America/Chicago")
    try:
        s = host.services
        add_patient(s, "p1")
        # One value, shared by every handler that reads preferences.
        assert messaging(s).defaults is acs_deps(s).defaults is s.preferences
        recipient = patient_recipient(s.store.read("Patient", "p1"), s.preferences)
        assert (recipient.locale, recipient.time_zone) == ("es-MX", "America/Chicago")
    finally:
        host.services.close()


@pytest.mark.parametrize(("setting", "value", "name"), [
    ("default_time_zone", "Mars/Olympus", "VIGIL_DEFAULT_TIME_ZONE"),
    ("default_locale", "english please", "VIGIL_DEFAULT_LOCALE"),
])
def test_a_wrong_default_stops_the_start_by_name(tmp_path: Path, setting: str, value: str, name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        make_host(tmp_path / "data", **{setting: value})
