"""Benchmark of the foundation pipeline on the embedded adapters. Prints figures; not a test.

    .venv/bin/python bench/pipeline.py [--messages 20000] [--patients 200]

Measures: embedded store writes/s and reads/s; end-to-end readings/s through the local host
(device message on the bus -> Observation -> FHIR event -> rules -> alert -> message);
latency from message accepted (enqueued on the bus) to Observation stored, and to the alert
message recorded (Communication completed), p50/p99; peak RSS.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fhirstore.paging import search_all  # noqa: E402
from fhirstore.sqlite_store import SqliteFhirStore  # noqa: E402
from handlers.ingest import RawMessage, handle_device_messages  # noqa: E402
from runtime.bootstrap import Services, bootstrap  # noqa: E402
from runtime.cohort import careplan, device  # noqa: E402
from runtime.host import LocalHost  # noqa: E402
from runtime.settings import Settings  # noqa: E402


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def messages(n: int, patients: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    start = datetime(2026, 10, 1, tzinfo=UTC)
    out = []
    for i in range(n):
        p = f"bench-{i % patients:04d}"
        when = (start + timedelta(minutes=7 * i)).isoformat()
        kind = i % 4
        if kind == 0:
            sys_ = 185 if rng.random() < 0.01 else round(rng.gauss(132, 10))
            m = {"type": "blood_pressure", "values": {"systolic": sys_, "diastolic": 80}}
        elif kind == 1:
            m = {"type": "heart_rate", "values": {"bpm": round(rng.gauss(74, 6))}}
        elif kind == 2:
            m = {"type": "spo2", "values": {"percent": 90 if rng.random() < 0.01 else 97}}
        else:
            m = {"type": "body_weight", "values": {"weight": round(rng.gauss(80, 0.4), 1)}}
        out.append(json.dumps({"deviceId": f"{p}-dev", "patientId": p, "time": when, **m}).encode())
    return out


def enroll(services: Services, patients: int) -> None:
    for i in range(patients):
        pid = f"bench-{i:04d}"
        services.store.update({"resourceType": "Patient", "id": pid, "active": True,
                               "telecom": [{"system": "sms", "value": f"+1555010{i:04d}"}]})
        services.store.update(device(f"{pid}-dev", pid))
        for program in ("hypertension", "copd", "heart-failure"):
            services.store.update(careplan(pid, program))


def observation(i: int) -> dict:
    return {"resourceType": "Observation", "id": f"obs-{i}", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/bench-{i % 50:04d}"},
            "effectiveDateTime": (datetime(2026, 10, 1, tzinfo=UTC) + timedelta(minutes=7 * i)).isoformat(),
            "valueQuantity": {"value": 60 + i % 40, "unit": "/min", "system": "http://unitsofmeasure.org",
                              "code": "/min"}}


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


def bench_ingest(tmp: Path, n: int, patients: int) -> None:
    """Ingest alone (templates, identity, one transaction per batch of 100), no rule evaluation."""
    services = bootstrap(Settings.from_env({}, data_dir=tmp / "ingest"))
    enroll(services, patients)
    from triggers.device_messages import ingest_deps

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
    print(f"ingest  to store    {n / first:>9,.0f} messages/s  (templates + identity + batch transaction)")
    print(f"ingest  replay      {n / replay:>9,.0f} messages/s  (same messages again: no writes)")
    services.close()


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--store-writes", type=int, default=10000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bench_store(tmp, args.store_writes)
        bench_ingest(tmp, args.messages, args.patients)
        bench_pipeline(tmp, args.messages, args.patients)
        bench_latency(tmp, rate=50, seconds=4)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS            {rss_mb:>9,.0f} MB")
    _ = statistics  # figures above are exact percentiles of the samples


if __name__ == "__main__":
    main()
