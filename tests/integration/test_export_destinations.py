"""Export destinations: Blob storage against Azurite, the Data Lake (dfs) API against a loopback stub of the
calls it makes, and a full destination (local ENOSPC, a remote service error) that fails clearly, commits
nothing and loses nothing on the next run."""

from __future__ import annotations

import errno
import json
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from analytics.export import ExportError, run_export
from analytics.export.destination import open_destination
from analytics.export.schema import strip_nulls
from common.clock import FixedClock
from tests.support import azurite as az
from tests.support.dfs_stub import KEY, run_dfs_stub
from tests.unit.analytics.fixtures import seed


@pytest.fixture
def clock() -> FixedClock:
    from datetime import UTC, datetime

    return FixedClock(datetime(2026, 11, 20, 8, 0, tzinfo=UTC))


def _rows(files: dict[str, bytes], kind: str = "result") -> tuple[list[dict], list[dict]]:
    nd, rows = [], []
    for name in sorted(files):
        if f"/{kind}/" not in f"/{name}":
            continue
        if name.endswith(".ndjson"):
            nd += [json.loads(line) for line in files[name].decode().splitlines()]
        elif name.endswith(".parquet"):
            import io

            rows += [strip_nulls(r) for r in pq.read_table(io.BytesIO(files[name])).to_pylist()]
    return nd, rows


def _blobs(container, prefix: str) -> dict[str, bytes]:  # noqa: ANN001
    return {b.name.removeprefix(prefix): container.download_blob(b.name).readall()
            for b in container.list_blobs(name_starts_with=prefix)}


def test_blob_destination_on_azurite_round_trips_then_exports_changes_and_tombstones(azurite, tmp_path, clock):
    store = seed(tmp_path / "fhir.db", clock)
    container = azurite.container("lake-roundtrip")
    dest = f"{azurite.account_url}/lake-roundtrip/vigil"
    first = run_export(tmp_path / "fhir.db", open_destination(dest, account_key=az.KEY), clock=clock, grace_s=0)
    assert first.resources == {"Observation": 30, "Patient": 3}
    files = _blobs(container, "vigil/")
    nd, rows = _rows(files)
    assert len(nd) == len(rows) == 33 and nd == [store.read(r["resourceType"], r["id"]) for r in nd]
    assert any(n.startswith("result/Observation/2026/11/") and n.endswith("/r000001/Observation-0000.parquet")
               for n in files)
    state = json.loads(files["_vigil/state.json"])
    assert state["pending"] is None and state["runs"] == 1 and state["watermark"] == first.upto
    assert "_vigil/schema/Observation.arrow-schema" in files

    clock.advance(timedelta(minutes=1))
    store.update({**store.read("Observation", "obs-1"), "status": "amended"})
    store.delete("Observation", "obs-2")
    clock.advance(timedelta(minutes=1))
    second = run_export(tmp_path / "fhir.db", open_destination(dest, account_key=az.KEY), clock=clock, grace_s=0)
    assert second.resources == {"Observation": 1} and second.deleted == {"Observation": 1}
    files = _blobs(container, "vigil/")
    gone, _ = _rows(files, "deleted")
    assert [(g["id"], g["meta"]["versionId"]) for g in gone] == [("obs-2", "2")]
    # The schema kept in the container was reused, not relearned: the second Parquet file has the same type.
    schemas = {pq.read_schema(__import__("io").BytesIO(v)).field("valueQuantity").type
               for k, v in files.items() if k.startswith("result/Observation") and k.endswith(".parquet")}
    assert len(schemas) == 1


def test_the_cli_exports_to_azurite_with_the_account_key_from_settings(azurite, tmp_path, clock, monkeypatch,
                                                                       capsys):
    from runtime.cli import main

    data = tmp_path / "data"
    data.mkdir()
    seed(data / "fhir.db", clock, patients=2, observations=4)
    container = azurite.container("lake-cli")
    monkeypatch.setenv("VIGIL_EXPORT_STORAGE_KEY", az.KEY)
    code = main(["--data-dir", str(data), "export", f"{azurite.account_url}/lake-cli", "--grace", "0",
                 "--no-progress", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    summary = json.loads(out)
    assert summary["resources"] == {"Observation": 4, "Patient": 2}
    assert summary["destination"] == "blob container lake-cli"
    assert any(b.name.startswith("result/Patient/") for b in container.list_blobs())


def test_data_lake_destination_uses_only_create_append_flush_read_and_delete(tmp_path, clock):
    store = seed(tmp_path / "fhir.db", clock)
    with run_dfs_stub() as dfs:
        dest = open_destination(f"{dfs.account_url}/analytics/vigil", account_key=KEY, api="dfs", retry_total=0)
        summary = run_export(tmp_path / "fhir.db", dest, clock=clock, grace_s=0)
        assert summary.destination == "file system analytics/vigil"
        files = {k.removeprefix("analytics/vigil/"): v for k, v in dfs.under("analytics/vigil/").items()}
        nd, rows = _rows(files)
        assert len(nd) == len(rows) == 33 and nd == [store.read(r["resourceType"], r["id"]) for r in nd]
        assert json.loads(files["_vigil/state.json"])["watermark"] == summary.upto
        assert {op for _, op in dfs.calls} <= {"file", "append", "flush", "read"}
        # Every file was flushed at its full length: nothing is left staged but not committed.
        assert all(bytes(dfs.staged[k]) == v for k, v in dfs.files.items())


def test_a_service_error_fails_the_run_clearly_and_the_next_run_loses_nothing(tmp_path, clock):
    store = seed(tmp_path / "fhir.db", clock)
    with run_dfs_stub() as dfs:
        def dest():  # noqa: ANN202
            return open_destination(f"{dfs.account_url}/analytics", account_key=KEY, api="dfs", retry_total=0)

        # The pending state (written twice: the window, then the run's folders) and two of the four data files
        # go through (3 writes per file: create, append, flush), then the service refuses every write, as a
        # full or failing account does.
        dfs.refuse_writes_after(2 * 3 + 2 * 3)
        refused = r"writing result/.* failed \(HTTP 500 InternalError\).*next run redoes it"
        with pytest.raises(ExportError, match=refused):
            run_export(tmp_path / "fhir.db", dest(), clock=clock, grace_s=0)
        state = json.loads(dfs.files["analytics/_vigil/state.json"])
        assert state["watermark"] == 0 and state["pending"]["run_id"] == "r000001"
        assert state["pending"]["dirs"]  # what the failed run may have left is recorded
        dfs.refuse_after = None
        again = run_export(tmp_path / "fhir.db", dest(), clock=clock, grace_s=0)
        assert again.resumed and again.run_id == "r000001"
        assert ("DELETE", "recursive") in dfs.calls  # the failed run's folders were removed first
        nd, rows = _rows({k.removeprefix("analytics/"): v for k, v in dfs.files.items()})
        ids = Counter((r["resourceType"], r["id"]) for r in nd)
        assert len(ids) == 33 and set(ids.values()) == {1}  # each exactly once
        assert Counter((r["resourceType"], r["id"]) for r in rows) == ids
        assert nd[:3] == [store.read(r["resourceType"], r["id"]) for r in nd[:3]]


def test_the_sdk_retries_a_busy_service(tmp_path, clock):
    seed(tmp_path / "fhir.db", clock, patients=1, observations=2)
    with run_dfs_stub() as dfs:
        dfs.fail_writes(1, 503, "ServerBusy")
        dest = open_destination(f"{dfs.account_url}/analytics", account_key=KEY, api="dfs", retry_total=2)
        assert run_export(tmp_path / "fhir.db", dest, clock=clock, grace_s=0).resources == {
            "Observation": 2, "Patient": 1}


def test_a_full_local_disk_fails_clearly_and_loses_nothing(tmp_path, clock, monkeypatch):
    seed(tmp_path / "fhir.db", clock)
    lake = tmp_path / "lake"
    real = Path.write_bytes
    written = {"n": 0}

    def full(self: Path, data: bytes) -> int:  # the second data file finds the disk full
        if self.suffix == ".ndjson":
            written["n"] += 1
            if written["n"] >= 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(ExportError, match="No space left on device.*nothing of this window was committed"):
        run_export(tmp_path / "fhir.db", lake, clock=clock, grace_s=0)
    state = json.loads((lake / "_vigil" / "state.json").read_text())
    assert state["watermark"] == 0 and state["pending"] is not None
    assert not list((lake / "result").rglob("*.ndjson")) if (lake / "result").exists() else True
    monkeypatch.setattr(Path, "write_bytes", real)
    summary = run_export(tmp_path / "fhir.db", lake, clock=clock, grace_s=0)
    assert summary.resumed and summary.resources == {"Observation": 30, "Patient": 3}
    nd = [json.loads(line) for f in (lake / "result").rglob("*.ndjson") for line in f.read_text().splitlines()]
    assert len(nd) == len({(r["resourceType"], r["id"]) for r in nd}) == 33
