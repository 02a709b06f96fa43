"""The compatibility-data helper: a missing folder skips a developer's run and fails a CI run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import compat


def test_missing_data_skips_outside_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv(compat.ENV, str(tmp_path / "nowhere"))
    with pytest.raises(pytest.skip.Exception, match="nowhere"):
        compat.require(compat.compat_path("iomt-fhir"))
    assert compat.available(compat.compat_path("iomt-fhir")) is False


def test_missing_data_fails_under_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "1")
    monkeypatch.setenv(compat.ENV, str(tmp_path / "nowhere"))
    with pytest.raises(pytest.fail.Exception, match="compatibility data not found"):
        compat.require(compat.compat_path("sql-on-fhir-v2", "tests"))
    with pytest.raises(pytest.UsageError):
        compat.available(compat.compat_path("iomt-fhir"))


def test_present_data_is_returned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv(compat.ENV, str(tmp_path))
    (tmp_path / "iomt-fhir").mkdir()
    assert compat.require(compat.compat_path("iomt-fhir")) == tmp_path / "iomt-fhir"
