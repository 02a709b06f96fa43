"""Guessing `ACK` codes by SMS locks the number out (notifications.ack_lockout), through the local
host (`on_acs_event` fed from the bus, the real ACS SMS SDK, the embedded SQLite FHIR store).

What a user would check: 300 wrong codes from a care-team number cost 5 reply texts, not 301; the
lockout is on record for staff (a Basic record and a workflow event) and survives a restart and a
second instance; while it lasts even the right code from that number is refused, unanswered; other
numbers acknowledge as usual; when it ends the number acknowledges again.
"""

from __future__ import annotations

import json
from datetime import timedelta

from fhirstore.paging import search_all
from handlers.acs_events import handle_acs_event
from notifications.ack_codes import ACK_CODE_ALPHABET
from notifications.ack_lockout import LOCKED_UNTIL_EXT, RECORD_KIND, SENDER_EXT
from notifications.workflow_events import ACK_LOCKED_OUT
from runtime.bootstrap import WORKFLOW_EVENTS, acs_deps, bootstrap
from runtime.cli_events import read_events
from runtime.settings import Settings
from tests.integration import test_sms_ack as base
from tests.integration.test_sms_ack import (
    NURSE2_PHONE,
    NURSE_PHONE,
    PATIENT2_PHONE,
    STRANGER_PHONE,
    add_patient,
    care_team,
    code_in,
    crisis,
    feed,
    reply,
    sms_received,
    texts,
)

# The alert-and-care-team host of the SMS acknowledgement tests, and its clock.
host = base.host
clock = base.clock


def wrong_codes(right: str, n: int) -> list[str]:
    codes = []
    for a in ACK_CODE_ALPHABET:
        for b in ACK_CODE_ALPHABET:
            code = f"{a}{b}{right[2:]}"
            if code != right:
                codes.append(code)
    return codes[:n]


def lockouts(s) -> list[dict]:
    return [b for b in search_all(s.store, "Basic", {})
            if b.get("code", {}).get("coding", [{}])[0].get("code") == RECORD_KIND]


def ext(resource: dict, url: str):
    return next((e.get("valueDateTime") or e.get("valueString") for e in resource.get("extension", [])
                 if e["url"] == url), None)


def test_300_wrong_codes_cost_5_replies_and_lock_the_number_out_until_the_lockout_ends(host, acs, clock) -> None:
    s = host.services
    task = crisis(host)
    [alert_text] = texts(acs, NURSE_PHONE)
    code = code_in(alert_text)

    guesses = [sms_received(f"ACK {c}", f"Guess_{i}", NURSE_PHONE) for i, c in enumerate(wrong_codes(code, 300))]
    feed(host, *guesses)
    replies = texts(acs, NURSE_PHONE)[1:]
    assert len(replies) == 5  # was 300: one reply per guess
    assert replies[:4] == [reply(host, "ack_refused", c) for c in wrong_codes(code, 4)]
    assert replies[4] == reply(host, "ack_locked", wrong_codes(code, 5)[4])
    assert "link" in replies[4]

    # On record for staff: the lockout record names the number and when it ends ...
    [record] = lockouts(s)
    assert ext(record, SENDER_EXT) == NURSE_PHONE
    assert ext(record, LOCKED_UNTIL_EXT) == "2026-11-20T16:00:00.000Z"  # DAYTIME 15:00 + 1 h (the default)
    # ... and one workflow event, which carries no number.
    events = [e for _, e in read_events(s.settings.path("bus.db"), WORKFLOW_EVENTS) if e]
    [locked] = [e for e in events if e["eventType"] == ACK_LOCKED_OUT]
    assert locked["data"] == {"lockout": f"Basic/{record['id']}", "failures": 5, "lockedForSeconds": 3600}
    assert NURSE_PHONE.lstrip("+") not in json.dumps(events)

    # The right code from the locked-out number: refused, unanswered, the alert untouched.
    feed(host, sms_received(f"ACK {code}", "Right_1", NURSE_PHONE))
    assert len(texts(acs, NURSE_PHONE)) == 6
    assert s.store.read("Task", task["id"])["status"] == "requested"

    # Durable and shared: a restarted or second instance on the same store sees the lockout.
    other = bootstrap(Settings.from_env({}, data_dir=s.settings.data_dir, channels_config=s.settings.channels_config,
                                        org_name="Acme Clinic"), clock=clock)
    try:
        outcome = handle_acs_event(sms_received(f"ACK {code}", "Right_2", NURSE_PHONE), acs_deps(other))
        assert outcome.action == "ack-locked-out" and outcome.reply is None
    finally:
        other.close()

    # When the lockout ends, the number acknowledges again.
    clock.advance(timedelta(hours=1))
    feed(host, sms_received(f"ACK {code}", "Right_3", NURSE_PHONE))
    assert texts(acs, NURSE_PHONE)[-1] == reply(host, "ack_ok", code)
    assert s.store.read("Task", task["id"])["owner"] == {"reference": "Practitioner/nurse-1"}


def test_other_numbers_acknowledge_while_one_is_locked_out(host, acs) -> None:
    s = host.services
    add_patient(s, "p2", phone=PATIENT2_PHONE, programs=("hypertension",))
    care_team(s, "p2", nurse="nurse-2", physician="doctor-1")
    crisis(host, "p1")
    task2 = crisis(host, "p2")
    code2 = code_in(texts(acs, NURSE2_PHONE)[0])

    feed(host, *[sms_received(f"ACK {c}", f"Stranger_{i}", STRANGER_PHONE)
                 for i, c in enumerate(wrong_codes(code2, 20))])
    assert len(texts(acs, STRANGER_PHONE)) == 5
    feed(host, sms_received(f"ACK {code2}", "Nurse2_1", NURSE2_PHONE))
    assert texts(acs, NURSE2_PHONE)[-1] == reply(host, "ack_ok", code2)
    assert s.store.read("Task", task2["id"])["owner"] == {"reference": "Practitioner/nurse-2"}
    assert [ext(r, SENDER_EXT) for r in lockouts(s)] == [STRANGER_PHONE]  # nurse-2 has no failures


def test_a_redelivered_guess_counts_once_and_a_right_code_clears_the_count(host, acs) -> None:
    crisis(host)
    code = code_in(texts(acs, NURSE_PHONE)[0])
    [guess] = wrong_codes(code, 1)
    # Event Grid delivers one text ten times: one failure, one reply.
    feed(host, *[sms_received(f"ACK {guess}", "Guess_once", NURSE_PHONE, event_id=f"evt-{i}") for i in range(10)])
    assert len(texts(acs, NURSE_PHONE)) == 2
    # Four more mistakes would lock the number out; a right code in between resets the count.
    feed(host, *[sms_received(f"ACK {c}", f"Typo_{i}", NURSE_PHONE) for i, c in enumerate(wrong_codes(code, 4)[1:])])
    feed(host, sms_received(f"ACK {code}", "Right", NURSE_PHONE))
    assert texts(acs, NURSE_PHONE)[-1] == reply(host, "ack_ok", code)
    feed(host, *[sms_received(f"ACK {c}", f"Later_{i}", NURSE_PHONE) for i, c in enumerate(wrong_codes(code, 4))])
    assert texts(acs, NURSE_PHONE)[-1] == reply(host, "ack_refused", wrong_codes(code, 4)[-1])  # not locked


def test_failures_outside_the_window_do_not_add_up(host, acs, clock) -> None:
    crisis(host)
    code = code_in(texts(acs, NURSE_PHONE)[0])
    for i, c in enumerate(wrong_codes(code, 12)):
        feed(host, sms_received(f"ACK {c}", f"Slow_{i}", NURSE_PHONE))
        clock.advance(timedelta(minutes=4))  # 4 guesses per 15-minute window at most
    assert texts(acs, NURSE_PHONE)[1:] == [reply(host, "ack_refused", c) for c in wrong_codes(code, 12)]
