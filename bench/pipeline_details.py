"""The bench's older figures (`bench/pipeline.py --details`): the store alone, ingest alone, a
backlog drained end to end, and one reading at a time."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.pipeline_workload import enroll, messages, observation, pct
from fhirstore.paging import search_all
from fhirstore.sqlite import SqliteFhirStore
from handlers.ingest import RawMessage, handle_device_messages
from runtime.bootstrap import bootstrap
from runtime.cohort import careplan, device
from runtime.host import LocalHost
from runtime.settings import Settings


def bench_store(tmp: Path, n: int) -> None:
    store = SqliteFhirStore(tmp / "store-bench.db")
    store.update({"resourceType": "Patient", "id": "p"})
    obs = [observation(i) for i in range(n)]
    t0 = time.perf_counter()
    for o in obs:
        store.update(o)
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for o in obs:
        store.read("Observation", o["id"])
    read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    searches = 200
    for i in range(searches):
        store.search("Observation", {"subject": f"Patient/bench-{i % 50:04d}", "code": "http://loinc.org|8867-4",
                                     "date": "ge2026-10-05", "_count": "100"})
    search_s = time.perf_counter() - t0
    print(f"store   writes      {n / write_s:>9,.0f} Observations/s  (one transaction each, {n} writes)")
    print(f"store   reads       {n / read_s:>9,.0f} reads/s")
    print(f"store   searches    {searches / search_s:>9,.0f} searches/s (subject+code+date, {n} Observations)")


def bench_ingest(tmp: Path, n: int, patients: int, *, quiet: bool = False) -> dict[str, int]:
    """Ingest alone (templates, identity, one transaction per batch of 100), no rule evaluation;
    printed unless `quiet`, and returned."""
    services = bootstrap(Settings.from_env({}, data_dir=tmp / "ingest"))
    enroll(services, patients)
    from runtime.bootstrap import ingest_deps

    deps = ingest_deps(services)
    msgs = [RawMessage(body=m) for m in messages(n, patients, seed=3)]
    t0 = time.perf_counter()
    for i in range(0, n, 100):
        handle_device_messages(msgs[i:i + 100], deps)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, n, 100):
        handle_device_messages(msgs[i:i + 100], deps)
    replay = time.perf_counter() - t0
    if not quiet:
        print(f"ingest  to store    {n / first:>9,.0f} messages/s  (templates + identity + batch transaction)")
        print(f"ingest  replay      {n / replay:>9,.0f} messages/s  (same messages again: no writes)")
    services.close()
    return {"ingest_to_store_msgs_per_s": round(n / first), "ingest_replay_msgs_per_s": round(n / replay)}


def bench_pipeline(tmp: Path, n: int, patients: int) -> None:
    services = bootstrap(Settings.from_env({}, data_dir=tmp / "pipeline"))
    host = LocalHost(services)
    host.acquire()
    enroll(services, patients)
    host.run_until_idle()
    msgs = messages(n, patients)
    t0 = time.perf_counter()
    wall0 = time.time()
    host.publish_device_messages(msgs)
    assert host.run_until_idle(timeout_s=1800)
    elapsed = time.perf_counter() - t0

    def ts(text: str) -> float:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    obs = search_all(services.store, "Observation", {"_count": "1000"})
    obs_lat = [ts(o["meta"]["lastUpdated"]) - wall0 for o in obs]
    comms = search_all(services.store, "Communication", {"_count": "1000"})
    msg_lat = [ts(c["sent"]) - wall0 for c in comms if c.get("sent")]
    print(f"pipeline end to end {n / elapsed:>9,.0f} readings/s  ({n} readings, {patients} patients, "
          f"{elapsed:.1f} s, {len(comms)} alert messages)")
    print("  note: all messages are enqueued at once, so latency here includes queueing behind the backlog")
    print(
        f"  accepted -> Observation stored   p50 {pct(obs_lat, 50) * 1000:8.0f} ms"
        f"   p99 {pct(obs_lat, 99) * 1000:8.0f} ms"
    )
    print(
        f"  accepted -> message recorded     p50 {pct(msg_lat, 50) * 1000:8.0f} ms"
        f"   p99 {pct(msg_lat, 99) * 1000:8.0f} ms"
    )
    host.release()
    services.close()


def bench_latency(tmp: Path, rate: int, seconds: float) -> None:
    """Steady load below capacity: the latency a single reading sees."""
    services = bootstrap(Settings.from_env({}, data_dir=tmp / "latency"))
    host = LocalHost(services)
    host.acquire()
    services.store.update({"resourceType": "Patient", "id": "lat", "active": True})
    services.store.update(device("lat-dev", "lat"))
    services.store.update(careplan("lat", "copd"))
    lat: list[float] = []
    start = datetime(2026, 9, 1, tzinfo=UTC)
    total = int(rate * seconds)
    t_end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < t_end and i < total:
        body = json.dumps({"deviceId": "lat-dev", "patientId": "lat", "type": "spo2",
                           "time": (start + timedelta(days=i)).isoformat(), "values": {"percent": 88}}).encode()
        t0 = time.perf_counter()
        host.publish_device_messages([body])
        host.run_until_idle(timeout_s=10)
        lat.append(time.perf_counter() - t0)
        i += 1
        time.sleep(max(0.0, 1.0 / rate - lat[-1]))
    # Each reading falls on its own day, so each opens an alert and records two messages.
    print(f"latency one reading at a time (each crossing a threshold: alert + 2 messages), {len(lat)} readings:")
    print(f"  accepted -> message recorded     p50 {pct(lat, 50) * 1000:8.1f} ms   p99 {pct(lat, 99) * 1000:8.1f} ms")
    host.release()
    services.close()


