"""Health data at rest is readable by its owner only: the data directory 0700 and every file in it
0600 (SQLite's -wal/-shm included, outbox messages with their acknowledgement links included),
whatever the umask of the process that made them."""

from __future__ import annotations

import io
import logging
import os
import stat
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from runtime.bootstrap import bootstrap
from runtime.cli import main
from runtime.demo import run_demo
from runtime.settings import Settings


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def _modes(root: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        out[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return out


def _assert_private(root: Path) -> dict[str, int]:
    modes = _modes(root)
    loose = {name: oct(mode) for name, mode in modes.items()
             if mode != (0o700 if (root / name).is_dir() else 0o600)}
    assert not loose, f"not private: {loose}"
    return modes


@pytest.mark.parametrize("umask", [0o022, 0o000], indirect=True)
def test_a_pipeline_run_leaves_only_owner_only_files_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    data_dir = tmp_path / "new" / "data"  # made by Vigil, parents too
    services = bootstrap(Settings.from_env({}, data_dir=data_dir))
    try:
        result = run_demo(services, patients=6, days=4, start=date(2026, 11, 1), seed=7,
                          out=io.StringIO(), progress=io.StringIO())
        assert result["drained"]
        # Checked while the stores are open, so SQLite's side files exist and are checked too.
        modes = _assert_private(data_dir)
    finally:
        services.close()
    names = set(modes)
    for expected in ("fhir.db", "fhir.db-wal", "fhir.db-shm", "bus.db", "bus.db-wal", "deadletters.db",
                     "sends.db", "outbox", "host.lock", "ack-token-key", "demo/messages.jsonl"):
        assert expected in names, expected
    outbox = list((data_dir / "outbox").glob("*.json"))
    assert outbox, "the demo sent no message: nothing to check in the outbox"
    assert any("ack" in p.read_text() for p in outbox)  # the files hold working acknowledgement links
    _assert_private(data_dir)


@pytest.mark.parametrize("umask", [0o022, 0o000], indirect=True)
def test_the_vigil_command_makes_private_files_whatever_the_callers_umask(tmp_path: Path, umask: int,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "cli-data"
    assert main(["--data-dir", str(data_dir), "demo", "--patients", "4", "--days", "3"]) == 0
    _assert_private(data_dir)
    assert os.umask(umask) == umask  # main gave the caller's umask back


def test_an_existing_looser_directory_gets_one_warning_without_phi(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    data_dir = tmp_path / "shared"
    data_dir.mkdir()
    os.chmod(data_dir, 0o755)
    caplog.set_level(logging.WARNING)
    for _ in range(3):  # every command bootstraps; the warning is said once per process
        bootstrap(Settings.from_env({}, data_dir=data_dir)).close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "0755" in warnings[0] and "chmod 700" in warnings[0] and str(data_dir) in warnings[0]
    # An operator's own choice of directory mode is reported, not overridden...
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o755
    # ...while the files Vigil made are private all the same.
    assert {m for n, m in _modes(data_dir).items() if n != "."} == {0o600}


def test_a_private_directory_gets_no_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data_dir = tmp_path / "private"
    data_dir.mkdir(mode=0o700)
    os.chmod(data_dir, 0o700)
    caplog.set_level(logging.WARNING)
    bootstrap(Settings.from_env({}, data_dir=data_dir)).close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_database_files_an_older_version_left_world_readable_are_tightened(tmp_path: Path) -> None:
    data_dir = tmp_path / "old"
    bootstrap(Settings.from_env({}, data_dir=data_dir)).close()
    for name in ("fhir.db", "bus.db", "deadletters.db", "sends.db"):
        os.chmod(data_dir / name, 0o644)
    services = bootstrap(Settings.from_env({}, data_dir=data_dir))
    try:
        for name in ("fhir.db", "bus.db", "deadletters.db", "sends.db"):
            assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name
    finally:
        services.close()


@pytest.mark.parametrize("umask", [0o022, 0o000], indirect=True)
def test_the_consoles_staff_database_is_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    """The console keeps staff accounts (password hashes) in the data directory; embedded in a host
    that did not set the umask (the Functions worker's console route), it must still be 0600 with
    its WAL side files, like every other store."""
    from console.views import accounts_for

    data_dir = tmp_path / "data"
    services = bootstrap(Settings.from_env({}, data_dir=data_dir))
    try:
        accounts_for(services).add("nurse.one", "nurse", "correct horse battery")
        assert (data_dir / "staff.db").exists()
        _assert_private(data_dir)
    finally:
        services.close()
