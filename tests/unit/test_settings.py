from __future__ import annotations

from pathlib import Path

import pytest

from runtime.settings import Settings, SettingsError


def test_defaults_are_the_embedded_mode() -> None:
    s = Settings.from_env({})
    assert s.embedded and s.data_dir == Path(".vigil") and s.http_host == "127.0.0.1"


def test_values_come_from_vigil_prefixed_variables() -> None:
    s = Settings.from_env({"VIGIL_DATA_DIR": "/tmp/x", "VIGIL_HTTP_PORT": "8000",
                           "VIGIL_FHIR_URL": "https://fhir.example.test", "VIGIL_FHIR_AUTH": "azure"})
    assert s.data_dir == Path("/tmp/x") and s.http_port == 8000 and not s.embedded


def test_bad_values_name_the_setting() -> None:
    with pytest.raises(SettingsError, match="VIGIL_HTTP_PORT"):
        Settings.from_env({"VIGIL_HTTP_PORT": "eighty"})
    with pytest.raises(SettingsError, match="VIGIL_FHIR_AUTH"):
        Settings.from_env({"VIGIL_FHIR_AUTH": "magic"})


def test_secrets_are_not_in_the_repr() -> None:
    s = Settings.from_env({"VIGIL_LOCAL_TOKEN": "s3cret-token"})
    assert s.local_token == "s3cret-token" and "s3cret-token" not in repr(s)


def test_ack_sms_limits_have_defaults_and_refuse_nonsense() -> None:
    from datetime import timedelta

    limits = Settings.from_env({}).ack_sms_limits
    assert (limits.max_failures, limits.window, limits.lockout) == (5, timedelta(minutes=15), timedelta(hours=1))
    custom = Settings.from_env({"VIGIL_ACK_SMS_MAX_FAILURES": "3", "VIGIL_ACK_SMS_LOCKOUT_S": "600"}).ack_sms_limits
    assert (custom.max_failures, custom.lockout) == (3, timedelta(minutes=10))
    with pytest.raises(SettingsError, match="VIGIL_ACK_SMS_MAX_FAILURES"):
        Settings.from_env({"VIGIL_ACK_SMS_MAX_FAILURES": "0"})
    with pytest.raises(SettingsError, match="VIGIL_ACK_SMS_LOCKOUT_S"):
        Settings.from_env({"VIGIL_ACK_SMS_LOCKOUT_S": "-1"})
ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_in_the_example_file_and_the_settings_page() -> None:
    import json
    import re
    from dataclasses import fields

    names = {"VIGIL_" + f.name.upper() for f in fields(Settings)}
    example = set(json.loads((ROOT / "local.settings.example.json").read_text())["Values"])
    docs = set(re.findall(r"^\| `(VIGIL_[A-Z0-9_]+)`", (ROOT / "docs" / "settings.md").read_text(), re.M))
    assert names - example == set(), "settings missing from local.settings.example.json"
    assert names - docs == set(), "settings missing from docs/settings.md"
    # ...and nothing documented that Vigil does not read (the host's connection setting aside).
    assert {n for n in example | docs if n.startswith("VIGIL_")} - names == {"VIGIL_EVENT_HUB_CONNECTION"}


def test_rules_path_is_a_list_added_to_the_shipped_library(tmp_path: Path) -> None:
    import os

    from runtime.settings import DEFAULT_RULES

    a, b = tmp_path / "a", tmp_path / "b"
    s = Settings.from_env({"VIGIL_RULES_PATH": f"{a}{os.pathsep}{b}"})
    assert s.rules_dirs == (DEFAULT_RULES, a, b)
    only = Settings.from_env({"VIGIL_RULES_PATH": str(a), "VIGIL_RULES_SHIPPED": "false"})
    assert only.rules_dirs == (a,)
    with pytest.raises(SettingsError, match="VIGIL_RULES_SHIPPED must be true or false"):
        Settings.from_env({"VIGIL_RULES_SHIPPED": "maybe"})


def test_ack_links_follow_the_served_address_unless_a_public_url_is_set() -> None:
    assert Settings.from_env({"VIGIL_HTTP_PORT": "8123"}).ack_base_url == "http://127.0.0.1:8123"
    assert Settings.from_env({"VIGIL_HTTP_HOST": "0.0.0.0", "VIGIL_HTTP_PORT": "80"}).ack_base_url == "http://127.0.0.1:80"
    public = Settings.from_env({"VIGIL_HTTP_PORT": "8123", "VIGIL_PUBLIC_BASE_URL": "https://rpm.example.org/"})
    assert public.ack_base_url == "https://rpm.example.org"


def test_the_clinic_phone_is_required_to_send_messages() -> None:
    with pytest.raises(SettingsError, match="VIGIL_CONTACT_PHONE is required"):
        Settings.from_env({}).require_contact_phone()
    with pytest.raises(SettingsError, match="at least 7 digits"):
        Settings.from_env({"VIGIL_CONTACT_PHONE": "1"}).require_contact_phone()
    Settings.from_env({"VIGIL_CONTACT_PHONE": "+1-555-010-0100"}).require_contact_phone()
def test_as_of_fixes_the_clock_of_every_command(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from runtime.bootstrap import bootstrap

    services = bootstrap(Settings.from_env({"VIGIL_AS_OF": "2026-10-26T18:00:00Z"}, data_dir=tmp_path / "d"))
    try:
        assert services.clock.now() == datetime(2026, 10, 26, 18, 0, tzinfo=UTC)
    finally:
        services.close()


def test_as_of_without_an_offset_is_refused() -> None:
    with pytest.raises(SettingsError, match="VIGIL_AS_OF"):
        Settings.from_env({"VIGIL_AS_OF": "2026-10-26T18:00:00"})


def test_retention_settings_are_days_and_zero_keeps_forever() -> None:
    s = Settings.from_env({"VIGIL_RETENTION_OUTBOX_DAYS": "0", "VIGIL_RETENTION_DEAD_LETTER_DAYS": "1.5"})
    assert s.retention_s("outbox") is None
    assert s.retention_s("dead_letter") == 1.5 * 86400
    assert s.retention_s("bus") == 7 * 86400
