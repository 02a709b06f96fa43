"""The lake_export timer: registered in function_app.py, run by the local host like on Azure, it exports
what changed to VIGIL_EXPORT_DEST and does nothing without one."""

from __future__ import annotations

import json

from runtime.bootstrap import bootstrap
from runtime.host import LocalHost
from runtime.settings import Settings


def test_the_timer_exports_incrementally_to_the_configured_destination(tmp_path) -> None:
    lake = tmp_path / "lake"
    services = bootstrap(Settings.from_env({"VIGIL_EXPORT_DEST": str(lake), "VIGIL_EXPORT_GRACE_S": "0"},
                                           data_dir=tmp_path / "d"))
    try:
        host = LocalHost(services)
        assert "lake_export" in {s.name for s in host.of_kind("timerTrigger")}
        services.store.update({"resourceType": "Patient", "id": "p1", "active": True})
        host.run_timer("lake_export")
        state = json.loads((lake / "_vigil" / "state.json").read_text())
        assert state["runs"] == 1 and state["last_summary"]["resources"] == {"Patient": 1}
        services.store.update({"resourceType": "Patient", "id": "p1", "active": False})
        host.run_timer("lake_export")
        state = json.loads((lake / "_vigil" / "state.json").read_text())
        assert state["runs"] == 2 and state["last_summary"]["resources"] == {"Patient": 1}
        lines = [json.loads(line) for f in (lake / "result" / "Patient").rglob("*.ndjson")
                 for line in f.read_text().splitlines()]
        assert sorted(r["active"] for r in lines) == [False, True]
    finally:
        services.close()


def test_without_a_destination_the_timer_does_nothing(tmp_path) -> None:
    services = bootstrap(Settings.from_env({}, data_dir=tmp_path / "d"))
    try:
        LocalHost(services).run_timer("lake_export")
        assert not list(tmp_path.rglob("state.json"))
    finally:
        services.close()
