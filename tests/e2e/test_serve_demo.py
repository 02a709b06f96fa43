"""`make demo` then `vigil serve` (README, docs/console.md): serve on the demo's data directory starts
with the demo's fictional clinic phone when VIGIL_CONTACT_PHONE is not set, as `vigil demo` did."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from runtime.cli import DEMO_AS_OF

ROOT = Path(__file__).resolve().parents[2]


def test_serve_on_the_demo_data_directory_needs_no_clinic_phone_setting(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / DEMO_AS_OF).write_text("2026-11-15T18:00:00+00:00\n")  # what `vigil demo` leaves
    env = {k: v for k, v in os.environ.items() if k != "VIGIL_CONTACT_PHONE"}
    env |= {"VIGIL_DATA_DIR": str(data), "VIGIL_HTTP_PORT": "0", "VIGIL_HTTP_IDLE_TIMEOUT_S": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "serve"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        m = re.search(r"on (http://127\.0\.0\.1:\d+)", first)
        assert m, first  # without the fix: "vigil: VIGIL_CONTACT_PHONE is required ..."
        assert httpx.get(f"{m.group(1)}/console/login", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0
