"""`vigil serve` as a user runs it: it prints where it listens, answers, and stops on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def test_serve_listens_answers_with_the_token_and_stops_cleanly(tmp_path: Path) -> None:
    env = {**os.environ, "VIGIL_DATA_DIR": str(tmp_path / "data"), "VIGIL_HTTP_PORT": "0",
           "VIGIL_HTTP_IDLE_TIMEOUT_S": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "serve"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        m = re.search(r"on (http://127\.0\.0\.1:\d+)", first)
        assert m, first
        url = m.group(1)
        token = (tmp_path / "data" / "local-token").read_text().strip()
        assert httpx.get(f"{url}/api/health", timeout=10).json() == {"status": "ok"}
        assert httpx.get(f"{url}/fhir/metadata", timeout=10).status_code == 401
        meta = httpx.get(f"{url}/fhir/metadata", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert meta.json()["resourceType"] == "CapabilityStatement"
    finally:
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0
    assert time.monotonic() - start < 15
