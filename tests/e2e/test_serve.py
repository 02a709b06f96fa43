"""`vigil serve` as a user runs it: it prints where it listens, answers, and stops on SIGTERM."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from tests.support.serve_process import serve


def test_serve_listens_answers_with_the_token_and_stops_cleanly(tmp_path: Path) -> None:
    env = {**os.environ, "VIGIL_DATA_DIR": str(tmp_path / "data"), "VIGIL_HTTP_PORT": "0",
           "VIGIL_HTTP_IDLE_TIMEOUT_S": "2"}
    with serve(env) as served:
        url = served.url
        token = (tmp_path / "data" / "local-token").read_text().strip()
        assert httpx.get(f"{url}/api/health", timeout=10).json() == {"status": "ok"}
        assert httpx.get(f"{url}/fhir/metadata", timeout=10).status_code == 401
        meta = httpx.get(f"{url}/fhir/metadata", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert meta.json()["resourceType"] == "CapabilityStatement"
    assert served.code == 0
    assert served.stop_s < 15
