"""VIGIL_WORKERS and `vigil serve --workers`: a count the bus's partitions can split, or a clear refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.cli import main
from runtime.settings import Settings, SettingsError
from runtime.supervisor import Supervisor


def test_the_default_is_one_worker_the_serving_process() -> None:
    assert Settings.from_env({}).workers == 1


@pytest.mark.parametrize("raw", ["0", "33", "-1"])
def test_a_worker_count_outside_the_partitions_is_refused(raw: str) -> None:
    with pytest.raises(SettingsError, match=f"VIGIL_WORKERS must be between 1 and 32.*not {raw}"):
        Settings.from_env({"VIGIL_WORKERS": raw})


def test_serve_with_zero_workers_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data-dir", str(tmp_path / "d"), "serve", "--workers", "0"]) == 2
    assert "VIGIL_WORKERS must be between 1 and 32" in capsys.readouterr().err
    assert not (tmp_path / "d" / "host.lock").exists()


def test_a_supervisor_of_no_workers_is_refused() -> None:
    with pytest.raises(ValueError, match="workers must be between 1 and 32, not 0"):
        Supervisor(Settings.from_env({}), 0)
