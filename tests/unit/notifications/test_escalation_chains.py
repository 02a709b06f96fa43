"""Escalation chain definitions (YAML): what they load to, and errors that name file, line and field."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from notifications.escalation_chains import EscalationError, load_chains


def test_chain_definition(chains) -> None:
    crisis = chains["crisis"]
    assert [(lv.roles, lv.channels, lv.wait) for lv in crisis.levels] == [
        (("nurse",), ("sms", "email"), timedelta(minutes=15)),
        (("physician",), ("sms",), timedelta(minutes=15)),
        (("on-call",), ("sms", "email"), timedelta(minutes=30)),
    ]
    assert (crisis.on_exhausted.action, crisis.on_exhausted.times, crisis.on_exhausted.notify) == (
        "repeat-last", 1, ("care-manager",))
    assert chains["simple"].on_exhausted.action == "stop"


@pytest.mark.parametrize(
    "text,where",
    [
        (
            "chains:\n  c:\n    levels:\n      - {notify: [nurse]}\n",
            "<chains>:4: chains.c.levels[0]: 'wait' is required",
        ),
        (
            "chains:\n  c:\n    levels:\n      - notify: [nurse]\n        wait: soon\n",
            "<chains>:5: chains.c.levels[0].wait: 'soon' is not a duration",
        ),
        ("chains:\n  c:\n    levels:\n      - {notify: [janitor], wait: 5m}\n", "unknown role 'janitor'"),
        (
            "chains:\n  c:\n    levels:\n      - {notify: [nurse], channels: [pager], wait: 5m}\n",
            "unknown channel kind(s) pager",
        ),
        ("chains:\n  c:\n    levels: []\n", "<chains>:3: chains.c.levels: a chain needs at least one level"),
        (
            "chains:\n  c:\n    levels:\n      - {notify: [nurse], wait: 5m}\n    on_exhausted: {action: panic}\n",
            "<chains>:5: chains.c.on_exhausted.action: must be 'stop' or 'repeat-last'",
        ),
        ("chains:\n  c:\n    levels:\n      - {notify: [nurse], wait: 5}\n", "give a unit"),
        ("chains:\n  c:\n    leveles: []\n", "unknown key(s) leveles"),
    ],
)
def test_bad_definitions_name_the_line_and_field(text, where) -> None:
    with pytest.raises(EscalationError) as err:
        load_chains(text, known_roles=["nurse"])
    assert where in str(err.value)


def test_chain_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "chains.yaml"
    path.write_text("chains:\n  c:\n    levels:\n      - {notify: [nurse], wait: 0m}\n")
    with pytest.raises(EscalationError, match=r"chains.yaml:4: chains.c.levels\[0\].wait: the wait must be longer"):
        load_chains(path)
