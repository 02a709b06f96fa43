"""The real Azure Functions Python worker indexes every function of function_app.py.

The worker indexes the app in one pass at start-up: one function it refuses (an annotation its
loader does not accept, an import error) and the host runs no function at all. `azure-functions-
runtime`, the worker's library, runs on Python 3.13 only, so this test runs it in the 3.13
environment `make worker-env` builds from requirements-worker.txt (tests/worker_check/index_app.py
drives it through the host's start-up requests). Without that environment the test is skipped
locally and fails under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
INDEX_APP = ROOT / "tests" / "worker_check" / "index_app.py"
# The app's packages, as pyproject.toml ships them (a copy of the app must hold every one).
APP_PACKAGES = tuple(p.rstrip("*") for p in tomllib.loads((ROOT / "pyproject.toml").read_text())
                     ["tool"]["setuptools"]["packages"]["find"]["include"])

# name -> binding name -> (binding type, direction): what the host must receive for each function.
EXPECTED = {
    "ingest_device_messages": {"events": ("eventHubTrigger", "in")},
    "on_fhir_event": {"event": ("eventGridTrigger", "in")},
    "alert_sweep": {"timer": ("timerTrigger", "in")},
    "escalation_sweep": {"timer": ("timerTrigger", "in")},
    "reminder_sweep": {"timer": ("timerTrigger", "in")},
    "retention_purge": {"timer": ("timerTrigger", "in")},
    "http_ingest": {"req": ("httpTrigger", "in"), "$return": ("http", "out")},
    "health": {"req": ("httpTrigger", "in"), "$return": ("http", "out")},
    "acknowledge_alert": {"req": ("httpTrigger", "in"), "$return": ("http", "out")},
    "on_acs_event": {"event": ("eventGridTrigger", "in")},
    "pull_fhir_changes": {"timer": ("timerTrigger", "in")},
    "fhir_notification": {"req": ("httpTrigger", "in"), "$return": ("http", "out")},
    "console": {"req": ("httpTrigger", "in"), "$return": ("http", "out")},
    "lake_export": {"timer": ("timerTrigger", "in")},
}
DIRECTIONS = {0: "in", 1: "out", 2: "inout"}


def _worker_python() -> Path:
    configured = os.environ.get("VIGIL_WORKER_PYTHON")
    python = Path(configured) if configured else ROOT / ".venv-worker" / "bin" / "python"
    if not python.exists():
        message = (f"no Python 3.13 worker environment at {python}: run `make worker-env` "
                   "(needs a Python 3.13 interpreter, see .ci/python313)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return python


def _index(app_dir: Path) -> tuple[int, dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run([str(_worker_python()), str(INDEX_APP), str(app_dir)], capture_output=True,
                          text=True, timeout=120, env=env, cwd=app_dir)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"the worker check printed nothing (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return proc.returncode, json.loads(lines[-1])


def _copy_app(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in APP_PACKAGES:
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=ignore)
    for name in ("function_app.py", "host.json"):
        shutil.copy(ROOT / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def indexed() -> dict[str, Any]:
    code, report = _index(ROOT)
    assert code == 0 and report["ok"], f"the worker refused the app: {report.get('stage')}: {report.get('error')}"
    return report


def test_every_function_is_indexed_with_its_bindings(indexed: dict[str, Any]) -> None:
    assert indexed["worker_python"] == "3.13"
    got = {
        fn["name"]: {name: (b["type"], DIRECTIONS[b["direction"]]) for name, b in fn["bindings"].items()}
        for fn in indexed["functions"]
    }
    assert got == EXPECTED


def test_metadata_is_what_the_host_needs_to_run_each_function(indexed: dict[str, Any]) -> None:
    by_name = {fn["name"]: fn for fn in indexed["functions"]}
    for name, fn in by_name.items():
        assert (fn["entry_point"], fn["script_file"], fn["language"]) == (name, "function_app.py", "python")
        assert fn["properties"] == {"worker_indexed": "True"}
        # The raw bindings are the function.json the host binds from: one per declared binding.
        assert sorted(b["name"] for b in fn["raw_bindings"]) == sorted(EXPECTED[name])

    (hub,) = by_name["ingest_device_messages"]["raw_bindings"]
    assert (hub["cardinality"].lower(), hub["eventHubName"], hub["connection"]) == (
        "many", "%VIGIL_EVENT_HUB_NAME%", "VIGIL_EVENT_HUB_CONNECTION")
    # The retry policy that keeps Event Hubs from checkpointing past a failed batch reaches the host.
    assert by_name["ingest_device_messages"]["retry_options"] == {
        "max_retry_count": 8, "retry_strategy": 0, "delay_interval": None,
        "minimum_interval": 5.0, "maximum_interval": 300.0}
    timers = [b for n in ("alert_sweep", "escalation_sweep", "reminder_sweep") for b in by_name[n]["raw_bindings"]]
    assert all(len(t["schedule"].split()) == 6 for t in timers)


def test_the_check_fails_on_a_builtin_generic_batch_annotation(tmp_path: Path) -> None:
    """The same app with the batch parameter annotated `list[func.EventHubEvent]`: the worker
    refuses it, and with it the whole app."""
    app = _copy_app(tmp_path / "app")
    trigger = app / "triggers" / "device_messages.py"
    source = trigger.read_text()
    assert "events: typing.List[func.EventHubEvent]" in source
    trigger.write_text(source.replace("events: typing.List[func.EventHubEvent]", "events: list[func.EventHubEvent]"))

    code, report = _index(app)
    assert code == 1 and report["ok"] is False
    assert report["stage"] == "WorkerInitRequest"
    assert "cannot load the ingest_device_messages function" in report["error"]
    assert "invalid non-type annotation list[azure.functions._eventhub.EventHubEvent]" in report["error"]


def test_the_check_fails_when_the_app_cannot_be_imported(tmp_path: Path) -> None:
    app = _copy_app(tmp_path / "app")
    (app / "triggers" / "timers.py").write_text("import vigil_missing_module\n")
    code, report = _index(app)
    assert code == 1 and report["ok"] is False
    assert "vigil_missing_module" in report["error"]
