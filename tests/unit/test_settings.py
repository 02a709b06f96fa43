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
