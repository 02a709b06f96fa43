"""Build a real local pipeline (embedded adapters on temp files) for integration and e2e tests."""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.clock import Clock, FixedClock
from runtime.bootstrap import Services, bootstrap
from runtime.cohort import careplan, device, fictional_identity
from runtime.host import LocalHost
from runtime.settings import Settings

# Tests run at a fixed daytime instant: patient messages wait out quiet hours, so a test that ran on
# the wall clock would pass or fail with the time of day.
DAYTIME = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
# The test clinic's fictional phone number (VIGIL_CONTACT_PHONE is required to send messages).
CLINIC_PHONE = "+1-555-010-0199"


def make_host(data_dir: Path, clock: Clock | None = None, *, bus_on_clock: bool = False, **settings: Any) -> LocalHost:
    """A local host on `data_dir`; with `bus_on_clock` the bus's retries come due when the test's
    clock is advanced past them (instead of in wall-clock time)."""
    settings.setdefault("contact_phone", CLINIC_PHONE)
    clock = clock or FixedClock(DAYTIME)
    services = bootstrap(Settings.from_env({}, data_dir=data_dir, **settings), clock=clock,
                         bus_clock=clock if bus_on_clock else None)
    return LocalHost(services)


def add_patient(services: Services, patient_id: str, phone: str = "+15550100001",
                programs: tuple[str, ...] = ("hypertension", "copd", "diabetes", "heart-failure")) -> None:
    """A Patient enrolled (by active CarePlans) in `programs`."""
    services.store.update({
        "resourceType": "Patient",
        "id": patient_id,
        "active": True,
        # A fictional name and birth date, as a real Patient has: the suite's PHI log guard
        # (tests/support/phi_guard.py) fails any test that logs them.
        **fictional_identity(zlib.crc32(patient_id.encode())),
        "telecom": [{"system": "sms", "value": phone, "rank": 1}],
    })
    for program in programs:
        services.store.update(careplan(patient_id, program))
    services.store.update(device(f"{patient_id}-dev", patient_id))


def reading(patient: str, type_: str, time: str, values: dict[str, Any], device_id: str | None = None) -> bytes:
    """A generic device message from the patient's registered device (`<patient>-dev`)."""
    return json.dumps({"deviceId": device_id or f"{patient}-dev", "patientId": patient, "type": type_,
                       "time": time, "values": values}).encode()


def count(services: Services, resource_type: str, **params: str) -> int:
    return services.store.search(resource_type, {**params, "_summary": "count"}).total or 0
