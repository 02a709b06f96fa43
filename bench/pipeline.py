"""Benchmark of the pipeline on the embedded adapters. Prints figures; not a test.

    .venv/bin/python bench/pipeline.py [--json] [--messages 4000] [--patients 200] [--history-days 30]
                                       [--rate 1000] [--rate-seconds 4] [--http-readings 400] [--details]

The main figures (`--json` prints them as one object), on the demo's mix over `--patients` patients
that each have `--history-days` of history (one reading of each kind a day), so windows are realistic:
- `readings_per_s`, `cpu_ms_per_reading`: everything offered at once, drained by the local host;
- `p50_ms`, `p99_ms` (accepted -> rules evaluated, every reading) and `alert_p99_ms` (accepted ->
  messages recorded, the alerting ones) at a steady offered rate `--rate` for `--rate-seconds`;
- `fhir_requests_per_reading`: the same mix with Vigil on the HTTP adapter against the facade,
  counted at the server; `fhir_requests_per_non_alerting_reading` (and `_alerting_`): the batch's
  ingest requests shared over its readings, plus the requests of evaluating a reading of that kind;
- `rss_mb`; the floors measured in the same run (`json_loads_us`, `sqlite_insert_us` per reading)
  and `ratio_to_floor` (CPU per reading over their sum).
`--details` adds the older figures below (store, ingest alone, backlog latency).

Measures: embedded store writes/s and reads/s; end-to-end readings/s through the local host
(device message on the bus -> Observation -> FHIR event -> rules -> alert -> message);
latency from message accepted (enqueued on the bus) to Observation stored, and to the alert
message recorded (Communication completed), p50/p99; peak RSS.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where bench/http.py would shadow the
# standard library's `http` package: put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent), *(p for p in sys.path if Path(p or ".").resolve() != _HERE)]

from fhirstore.paging import search_all  # noqa: E402
from fhirstore.port import EventOutbox  # noqa: E402
from fhirstore.sqlite import SqliteFhirStore  # noqa: E402
from handlers import fhir_events  # noqa: E402
from handlers.ingest import RawMessage, handle_device_messages  # noqa: E402
from runtime.bootstrap import Services, bootstrap, install  # noqa: E402
from runtime.cohort import careplan, device  # noqa: E402
from runtime.host import LocalHost  # noqa: E402
from runtime.settings import Settings  # noqa: E402


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")  # JSON output writes it as null
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


# The workload ends before now (readings from the future are refused) and follows the history.
WORKLOAD_START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=12)


def messages(n: int, patients: int, seed: int = 1) -> list[bytes]:
    """The demo's mix, round robin over the patients, each kind in turn; at most 10 days long."""
    rng = random.Random(seed)
    step = min(60.0, 10 * 86400 / max(n, 1))
    out = []
    for i in range(n):
        p = f"bench-{i % patients:04d}"
        when = (WORKLOAD_START + timedelta(seconds=step * i)).isoformat()
        kind = (i // patients + i) % 4
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


def history_messages(patients: int, days: int, seed: int = 7) -> list[bytes]:
    """`days` of the demo's mix before the workload starts: one reading of each kind per patient
    per day, in range (history makes realistic windows; it is written before the clock starts)."""
    rng = random.Random(seed)
    out = []
    for day in range(days, 0, -1):
        for i in range(patients):
            p = f"bench-{i:04d}"
            when = WORKLOAD_START - timedelta(days=day) + timedelta(minutes=i % 600)
            for kind, (mtype, values) in enumerate((
                    ("blood_pressure", {"systolic": round(rng.gauss(128, 6)), "diastolic": 80}),
                    ("heart_rate", {"bpm": round(rng.gauss(74, 4))}),
                    ("spo2", {"percent": 97}),
                    ("body_weight", {"weight": round(rng.gauss(80, 0.3), 1)}))):
                out.append(json.dumps({"deviceId": f"{p}-dev", "patientId": p, "type": mtype,
                                       "time": (when + timedelta(hours=2 * kind)).isoformat(),
                                       "values": values}).encode())
    return out


def drain_outbox(outbox: EventOutbox) -> None:
    """History is written before the clock starts: its events are not part of the workload."""
    while rows := outbox.outbox_pending(5000):
        outbox.outbox_done([seq for seq, _ in rows])


class Probe:
    """Times each reading from accepted (published) to rules evaluated, and to messages recorded
    for the alerting ones, by wrapping the handler the event path calls for an Observation."""

    def __init__(self) -> None:
        self.accepted: dict[float, float] = {}  # effective time -> wall time accepted
        self.evaluated: dict[float, float] = {}
        self.alerted: dict[float, float] = {}
        self._original = fhir_events.evaluate_observation

    def __enter__(self) -> Probe:
        def timed(obs: dict, *args: object, **kwargs: object) -> object:
            outcome = self._original(obs, *args, **kwargs)
            key = _effective_key(obs)
            if key in self.accepted and key not in self.evaluated and obs.get("code", {}).get("coding"):
                now = time.time()
                self.evaluated[key] = now
                if outcome.messages_sent:
                    self.alerted[key] = now
            return outcome

        fhir_events.evaluate_observation = timed  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        fhir_events.evaluate_observation = self._original  # type: ignore[assignment]

    def latencies_ms(self, which: dict[float, float]) -> list[float]:
        return [(t - self.accepted[k]) * 1000 for k, t in which.items()]


def _effective_key(obs: dict) -> float:
    text = obs.get("effectiveDateTime") or (obs.get("effectivePeriod") or {}).get("start") or ""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("nan")


def workload(tmp: Path, name: str, patients: int, history_days: int) -> tuple[Services, LocalHost]:
    services = bootstrap(Settings.from_env({}, data_dir=tmp / name))
    host = LocalHost(services)
    host.acquire()
    enroll(services, patients)
    from runtime.bootstrap import ingest_deps

    deps = ingest_deps(services)
    history = [RawMessage(body=m) for m in history_messages(patients, history_days)]
    for i in range(0, len(history), 100):
        handle_device_messages(history[i:i + 100], deps)
    assert services.outbox is not None  # the embedded store
    drain_outbox(services.outbox)
    return services, host


def measure_throughput(services: Services, host: LocalHost, msgs: list[bytes]) -> dict[str, float]:
    """Everything offered at once: how fast the pipeline drains it, and CPU per reading."""
    cpu0, t0 = time.process_time(), time.perf_counter()
    host.publish_device_messages(msgs)
    assert host.run_until_idle(timeout_s=3600)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"readings_per_s": round(len(msgs) / elapsed, 1), "cpu_ms_per_reading": round(cpu * 1000 / len(msgs), 3)}


def measure_latency(host: LocalHost, msgs: list[bytes], rate: float) -> dict[str, float]:
    """A steady offered rate: every 10 ms the messages then due are published, and the host pumps
    in between (one process, as `vigil serve`). Latency counts the queueing an overloaded pipeline adds."""
    keys = [_effective_key({"effectiveDateTime": json.loads(m)["time"]}) for m in msgs]
    with Probe() as probe:
        start = time.time()
        sent = 0
        while sent < len(msgs):
            due = min(len(msgs), int((time.time() - start) * rate) + 1)
            if due > sent:
                now = time.time()
                for k in keys[sent:due]:
                    probe.accepted[k] = now
                host.publish_device_messages(msgs[sent:due])
                sent = due
            if host.run_once() == 0:
                time.sleep(0.002)
        assert host.run_until_idle(timeout_s=3600)
        offered_s = time.time() - start
    lat, alert = probe.latencies_ms(probe.evaluated), probe.latencies_ms(probe.alerted)
    return {"rate": rate, "latency_readings": len(lat), "latency_alerts": len(alert),
            "p50_ms": round(pct(lat, 50), 1), "p99_ms": round(pct(lat, 99), 1),
            "alert_p99_ms": round(pct(alert, 99), 1), "latency_run_s": round(offered_s, 1)}


def measure_http_requests(tmp: Path, patients: int, history_days: int, n: int) -> dict[str, float]:
    """The same workload with Vigil on the HTTP adapter against the facade (a separate embedded
    store served over loopback), events pushed as Event Grid would: requests counted at the server."""
    from fhirstore import rest
    from runtime.bootstrap import event_deps, ingest_deps
    from tests.support.fhir_server import serve_store

    counted = {"on": False, "n": 0}
    original = rest.handle

    def counting(*args: object, **kwargs: object) -> object:
        if counted["on"]:
            counted["n"] += 1
        return original(*args, **kwargs)

    rest.handle = counting  # type: ignore[assignment]
    try:
        with SqliteFhirStore(tmp / "server.db") as server_store, serve_store(server_store) as base:
            services = bootstrap(Settings.from_env({}, data_dir=tmp / "http", fhir_url=base,
                                                   event_source="eventgrid"))
            install(services)
            enroll(services, patients)
            ingest = ingest_deps(services)
            history = [RawMessage(body=m) for m in history_messages(patients, history_days)]
            for i in range(0, len(history), 100):
                handle_device_messages(history[i:i + 100], ingest)
            drain_outbox(server_store)
            events = event_deps(services)
            msgs = [RawMessage(body=m) for m in messages(n, patients, seed=11)]
            counted["on"] = True
            ingest_requests, quiet, alerting = 0, [], []  # requests per evaluated reading, by outcome
            for i in range(0, n, 100):
                before = counted["n"]
                handle_device_messages(msgs[i:i + 100], ingest)
                ingest_requests += counted["n"] - before
                for _, event in server_store.outbox_pending(100000):
                    before = counted["n"]
                    outcome = fhir_events.handle_fhir_event(event, events)
                    if outcome.status == "evaluated":
                        (alerting if outcome.rules_fired else quiet).append(counted["n"] - before)
                drain_outbox(server_store)
            counted["on"] = False
            install(None)
            services.close()
    finally:
        rest.handle = original  # type: ignore[assignment]
    per_quiet = ingest_requests / n + (statistics.mean(quiet) if quiet else 0.0)
    return {"fhir_requests_per_reading": round(counted["n"] / n, 2),
            "fhir_requests_per_non_alerting_reading": round(per_quiet, 2),
            "fhir_requests_per_alerting_reading": round(ingest_requests / n + statistics.mean(alerting), 2)
            if alerting else None,
            "http_readings": n}


def measure_floors(msgs: list[bytes], tmp: Path) -> dict[str, float]:
    """What any design must pay per reading: parsing the device message and the Observation it
    becomes once (stdlib json), and a raw SQLite insert of the Observation's JSON (100 per commit)."""
    import sqlite3

    sample = msgs[:2000]
    bodies = [json.dumps(observation(i)) for i in range(len(sample))]
    t0 = time.perf_counter()
    for m, b in zip(sample, bodies, strict=True):
        json.loads(m)
        json.loads(b)
    loads_us = (time.perf_counter() - t0) * 1e6 / len(sample)
    db = sqlite3.connect(tmp / "floor.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE obs (id TEXT PRIMARY KEY, body TEXT NOT NULL)")
    t0 = time.perf_counter()
    for i in range(0, len(bodies), 100):
        db.execute("BEGIN")
        db.executemany("INSERT INTO obs VALUES (?, ?)", ((f"o{i + j}", b) for j, b in enumerate(bodies[i:i + 100])))
        db.execute("COMMIT")
    insert_us = (time.perf_counter() - t0) * 1e6 / len(bodies)
    db.close()
    return {"json_loads_us": round(loads_us, 2), "sqlite_insert_us": round(insert_us, 2)}


def run(args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    total = args.messages + int(args.rate * args.rate_seconds)
    msgs = messages(total, args.patients)
    out: dict[str, object] = {"messages": args.messages, "patients": args.patients,
                              "history_days": args.history_days}
    services, host = workload(tmp, "pipeline", args.patients, args.history_days)
    out.update(measure_throughput(services, host, msgs[:args.messages]))
    out.update(measure_latency(host, msgs[args.messages:], args.rate))
    out["alert_messages"] = len(search_all(services.store, "Communication", {"_count": "1000"}))
    host.release()
    services.close()
    if args.http_readings:
        out.update(measure_http_requests(tmp, min(args.patients, 50), min(args.history_days, 14), args.http_readings))
    out.update(measure_floors(msgs, tmp))
    floor_ms = (out["json_loads_us"] + out["sqlite_insert_us"]) / 1000  # type: ignore[operator]
    out["ratio_to_floor"] = round(out["cpu_ms_per_reading"] / floor_ms, 1)  # type: ignore[operator]
    out["rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true", help="print the main figures as one JSON object")
    ap.add_argument("--messages", type=int, default=4000, help="readings offered at once (throughput)")
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--history-days", type=int, default=30)
    ap.add_argument("--rate", type=float, default=1000.0, help="steady offered rate for latency, readings/s")
    ap.add_argument("--rate-seconds", type=float, default=4.0)
    ap.add_argument("--http-readings", type=int, default=400, help="readings through the HTTP adapter (0: skip)")
    ap.add_argument("--details", action="store_true", help="also the store, ingest and backlog figures")
    ap.add_argument("--store-writes", type=int, default=10000)
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # a bench prints figures, not the pipeline's warnings
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.details and not args.json:
            bench_store(tmp, args.store_writes)
            bench_ingest(tmp, args.messages, args.patients)
            bench_pipeline(tmp, args.messages, args.patients)
            bench_latency(tmp, rate=50, seconds=4)
        figures = run(args, tmp)
    if args.json:
        print(json.dumps({k: None if isinstance(v, float) and v != v else v for k, v in figures.items()}))
        return
    for key, value in figures.items():
        print(f"{key:<28} {value}")


if __name__ == "__main__":
    main()
