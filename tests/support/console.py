"""A demo-like data directory with console staff accounts, and a running `vigil serve` app on it."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from common.clock import FixedClock
from console.enrollment import ensure_practitioner
from console.views import accounts_for
from runtime.bootstrap import Services, bootstrap, local_token
from runtime.demo import run_demo
from runtime.host import LocalHost
from runtime.http_server import running_server
from runtime.settings import Settings

# The demo's two weeks from 2026-11-01, seen the afternoon after its last day (as `vigil demo` runs).
AS_OF = datetime(2026, 11, 15, 18, 0, tzinfo=UTC)
PASSWORD = "correct-horse-battery"
NURSE = "nurse1"  # acts as Practitioner/demo-nurse, on every demo care team
MANAGER = "manager1"


def demo_services(data_dir: Path, patients: int = 12) -> Services:
    services = bootstrap(Settings.from_env({}, data_dir=data_dir, contact_phone="+15550100999"),
                         clock=FixedClock(AS_OF))
    run_demo(services, patients=patients, days=14, start=date(2026, 11, 1), out=io.StringIO(), progress=io.StringIO())
    accounts = accounts_for(services)
    accounts.add(NURSE, "nurse", PASSWORD, "demo-nurse")
    accounts.add(MANAGER, "care-manager", PASSWORD, "demo-care-manager")
    for pid in ("demo-nurse", "demo-care-manager"):
        ensure_practitioner(services.store, pid, pid)
    return services


@dataclass
class Served:
    url: str
    services: Services
    host: LocalHost


@contextmanager
def serve_console(services: Services) -> Iterator[Served]:
    host = LocalHost(services)
    with running_server(host, local_token(services.settings)) as url:
        yield Served(url, services, host)
