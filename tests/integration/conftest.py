"""Fixtures shared by the integration tests that talk to the local ACS stand-in."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.acs_server import FakeAcsServer
from tests.support.azurite import Azurite, run_azurite
from tests.support.medplum import MedplumServer, run_medplum


@pytest.fixture(scope="module")
def acs_server() -> Iterator[FakeAcsServer]:
    with FakeAcsServer() as server:
        yield server


@pytest.fixture
def acs(acs_server: FakeAcsServer) -> Iterator[FakeAcsServer]:
    """The module's ACS stand-in, with nothing sent or scripted yet."""
    acs_server.reset()
    yield acs_server
    acs_server.clear_failures()


@pytest.fixture(scope="session")
def medplum() -> Iterator[MedplumServer]:
    """Medplum's FHIR router on loopback, started once per session (tests/support/medplum.py)."""
    with run_medplum() as server:
        yield server


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Azurite's Blob service on loopback, started once per session (tests/support/azurite.py)."""
    with run_azurite() as server:
        yield server
