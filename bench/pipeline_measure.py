"""The bench's main measurements with the pipeline pumped in the bench process (`--workers 0`):
throughput and CPU, latency at a steady rate, FHIR requests on the HTTP adapter, and the floors."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from bench.pipeline_workload import drain_outbox, enroll, history_messages, messages, observation, pct
from common.sqlite_db import WRITE_LOCK
from fhirstore.sqlite import SqliteFhirStore
from handlers import fhir_events
from handlers.ingest import RawMessage, handle_device_messages
from runtime.bootstrap import bootstrap, install
from runtime.host import LocalHost
from runtime.settings import Settings


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


def measure_throughput(host: LocalHost, msgs: list[bytes]) -> dict[str, float]:
    """Everything offered at once: how fast the pipeline drains it, and CPU per reading."""
    cpu0, t0, waited0 = time.process_time(), time.perf_counter(), WRITE_LOCK.waited_s
    host.publish_device_messages(msgs)
    assert host.run_until_idle(timeout_s=3600)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"readings_per_s": round(len(msgs) / elapsed, 1), "cpu_ms_per_reading": round(cpu * 1000 / len(msgs), 3),
            "write_lock_wait_ms_per_reading": round((WRITE_LOCK.waited_s - waited0) * 1000 / len(msgs), 3)}


def publish_paced(host: LocalHost, msgs: list[bytes], rate: float, accepted: dict[float, float],
                  *, between: Callable[[], None]) -> None:
    """Publish `msgs` at `rate` per second, each as soon as it is due, noting in `accepted` when each
    reading (by effective time) was accepted; `between` runs between rounds (pump, or just wait)."""
    keys = [_effective_key({"effectiveDateTime": json.loads(m)["time"]}) for m in msgs]
    start = time.time()
    sent = 0
    while sent < len(msgs):
        due = min(len(msgs), int((time.time() - start) * rate) + 1)
        if due > sent:
            now = time.time()
            for k in keys[sent:due]:
                accepted[k] = now
            host.publish_device_messages(msgs[sent:due])
            sent = due
        between()


def measure_latency(host: LocalHost, msgs: list[bytes], rate: float) -> dict[str, float]:
    """A steady offered rate: every 10 ms the messages then due are published, and the host pumps
    in between (one process, as `vigil serve`). Latency counts the queueing an overloaded pipeline adds."""
    def pump() -> None:
        if host.run_once() == 0:
            time.sleep(0.002)

    with Probe() as probe:
        start = time.time()
        publish_paced(host, msgs, rate, probe.accepted, between=pump)
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


