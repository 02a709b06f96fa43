"""Shared fixtures: real embedded adapters on temporary files (no mocks of our own code)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import settings

from common.clock import FixedClock

# Property tests (hypothesis): reproducible in CI (the same examples on every run, no example
# database), randomized locally so new cases keep being tried. https://hypothesis.readthedocs.io/en/latest/settings.html
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# Every test's log records are checked for PHI (DESIGN §9); see tests/support/phi_guard.py.
# pytester runs the guard on inner test sessions in tests/unit/test_phi_guard.py.
pytest_plugins = ["tests.support.phi_guard", "pytester"]

# `vigil` commands that send messages require the clinic's phone; tests that run them (in process or
# as subprocesses) use a fictional one. tests/e2e/test_operator_defaults.py checks the refusal without it.
os.environ.setdefault("VIGIL_CONTACT_PHONE", "+1-555-010-0199")


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2026, 11, 20, 12, 0, tzinfo=UTC))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "vigil-data"
    d.mkdir()
    return d


@pytest.fixture(autouse=True)
def _reset_installed_services() -> Iterator[None]:
    yield
    from runtime.bootstrap import install

    install(None)


@pytest.fixture
def captured_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog
