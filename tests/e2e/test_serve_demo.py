"""`make demo` then `vigil serve` (README, docs/console.md): serve on the demo's data directory starts
with the demo's fictional clinic phone when VIGIL_CONTACT_PHONE is not set, as `vigil demo` did."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from runtime.cli import DEMO_AS_OF
from tests.support.serve_process import serve


def test_serve_on_the_demo_data_directory_needs_no_clinic_phone_setting(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / DEMO_AS_OF).write_text("2026-11-15T18:00:00+00:00\n")  # what `vigil demo` leaves
    env = {k: v for k, v in os.environ.items() if k != "VIGIL_CONTACT_PHONE"}
    env |= {"VIGIL_DATA_DIR": str(data), "VIGIL_HTTP_PORT": "0", "VIGIL_HTTP_IDLE_TIMEOUT_S": "2"}
    # Without the marker serve refuses: "vigil: VIGIL_CONTACT_PHONE is required ..." (test_operator_defaults).
    with serve(env) as served:
        assert httpx.get(f"{served.url}/console/login", timeout=10).status_code == 200
        assert served.proc.stdout is not None
        banner = [served.proc.stdout.readline() for _ in range(5)]  # FHIR, console, token, functions, clock
        assert "clock:   resumed from the demo's as-of time (2026-11-15 18:00 UTC)" in banner[-1], banner
    assert served.code == 0
