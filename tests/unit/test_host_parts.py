"""Pieces of the local host that translate Azure binding conventions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from croniter import croniter

from runtime.host_functions import ncrontab_to_croniter, route_regex


def test_ncrontab_seconds_first_becomes_croniter_seconds_last() -> None:
    expr = ncrontab_to_croniter("30 */5 * * * *")  # second 30 of every 5th minute
    it = croniter(expr, datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC))
    assert it.get_next(datetime) == datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)
    assert it.get_next(datetime) == datetime(2026, 1, 1, 0, 5, 30, tzinfo=UTC)


def test_five_field_cron_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="6 fields"):
        ncrontab_to_croniter("*/5 * * * *")


def test_route_templates_capture_parameters() -> None:
    r = route_regex("ack/{token}")
    assert r.match("/ack/abc").groupdict() == {"token": "abc"}
    assert r.match("/ack") is None
    opt = route_regex("rules/{ruleset}/dry-run/{patient?}")
    assert opt.match("/rules/htn/dry-run").groupdict() == {"ruleset": "htn", "patient": None}
    assert opt.match("/rules/htn/dry-run/p1")["patient"] == "p1"
    assert route_regex("items/{id:int}").match("/items/7")["id"] == "7"


def test_a_function_is_disabled_by_the_functions_hosts_app_setting() -> None:
    from runtime.host_functions import function_disabled

    assert function_disabled("alert_sweep", {"AzureWebJobs.alert_sweep.Disabled": "true"})
    assert function_disabled("alert_sweep", {"AzureWebJobs__alert_sweep__Disabled": "True"})
    assert not function_disabled("alert_sweep", {"AzureWebJobs.alert_sweep.Disabled": "false"})
    assert not function_disabled("alert_sweep", {"AzureWebJobs.reminder_sweep.Disabled": "true"})
