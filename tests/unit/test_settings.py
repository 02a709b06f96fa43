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
