"""Shared fixtures for the mapping-template engine tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.compat import compat_path, require

COMPAT = compat_path("iomt-fhir")
TESTINPUT = COMPAT / "testinput"
SAMPLES = COMPAT / "sample-templates"
INGESTED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def compat_input(name: str) -> Path:
    """A file of iomt-fhir's template unit tests, by its original name (data_X.json)."""
    matches = sorted(TESTINPUT.glob(f"*__{name}"))
    assert matches, f"no compat test input named {name}"
    return matches[0]


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8-sig"))


@pytest.fixture(scope="session")
def compat_dir() -> Path:
    return require(COMPAT)
