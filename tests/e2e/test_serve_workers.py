"""`vigil serve --workers 2` as an operator runs it: the serving process answers HTTP and holds the
data dir, two worker processes pump it (a reading queued by `vigil ingest` beside it is stored),
and SIGTERM stops the workers with it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from runtime.cohort import device
from tests.support.pipeline import CLINIC_PHONE, reading
from tests.support.serve_process import ROOT, serve


def test_serve_with_two_workers_pumps_in_them_and_stops_them_on_sigterm(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {**os.environ, "VIGIL_DATA_DIR": str(data), "VIGIL_HTTP_PORT": "0", "VIGIL_WORKERS": "2",
           "VIGIL_CONTACT_PHONE": CLINIC_PHONE, "PYTHONPATH": str(ROOT)}
    with serve(env) as served:
        assert served.proc.stdout is not None
        line = ""
        while "workers:" not in line:
            line = served.proc.stdout.readline()
            assert line, "vigil serve stopped before starting its workers"
        pids = [int(p) for p in re.findall(r"\d+", line.split("pids", 1)[1])]
        assert len(pids) == 2 and served.proc.pid not in pids
        token = (data / "local-token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        for resource in ({"resourceType": "Patient", "id": "pw", "active": True}, device("pw-dev", "pw")):
            r = httpx.put(f"{served.url}/fhir/{resource['resourceType']}/{resource['id']}", json=resource,
                          headers=auth, timeout=10)
            assert r.status_code in (200, 201), r.text
        (tmp_path / "r.ndjson").write_bytes(
            reading("pw", "heart_rate", "2026-11-20T10:00:00Z", {"bpm": 70}) + b"\n")
        queued = subprocess.run([sys.executable, "-m", "runtime.cli", "ingest", str(tmp_path / "r.ndjson")],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert "queued 1 messages for the running Vigil host" in queued.stdout, queued.stdout + queued.stderr
        deadline = time.monotonic() + 60
        while True:
            found = httpx.get(f"{served.url}/fhir/Observation", params={"subject": "Patient/pw"}, headers=auth,
                              timeout=10).json()
            if found.get("total") or found.get("entry"):
                break
            assert time.monotonic() < deadline, "no worker stored the reading"
            time.sleep(0.2)
    assert served.code == 0
    for pid in pids:  # the workers stopped with the supervisor
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"worker {pid} still running after vigil serve stopped")
