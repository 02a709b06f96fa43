"""The bench's throughput and latency phases with N worker processes (`--workers N`), as
`vigil serve --workers N` runs them (runtime.supervisor): the bench process holds the data-dir
lock and publishes, the workers pump.

Each worker is the supervisor's worker (`runtime.supervisor.worker_host`) with a probe: it notes
when it evaluated each reading (and whether messages went out), and on SIGUSR1 writes a snapshot
of that, its CPU time and its time waiting for SQLite's write lock (`common.sqlite_db.WRITE_LOCK`)
to `<tmp>/bench-workers/<index>.json`, which the bench reads between phases."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from bench.pipeline_measure import _effective_key, publish_paced
from bench.pipeline_workload import hold_timers, pct
from common.clock import Clock
from common.sqlite_db import WRITE_LOCK
from runtime.bootstrap import WORKFLOW_EVENTS
from runtime.host import LocalHost
from runtime.settings import Settings
from runtime.supervisor import Supervisor


def _out_dir(settings: Settings) -> Path:
    return Path(settings.data_dir).parent / "bench-workers"


def bench_worker(settings: Settings, index: int, count: int, clock: Clock | None) -> None:
    """A supervisor worker (runtime.supervisor.run_worker) with the probe described above."""
    from handlers import fhir_events
    from runtime.bootstrap import bootstrap
    from runtime.supervisor import worker_host

    out = _out_dir(settings)
    evaluated: list[tuple[float, float, bool]] = []  # effective time, wall time evaluated, messages sent
    original = fhir_events.evaluate_observation

    def timed(obs: dict, *args: object, **kwargs: object) -> object:
        outcome = original(obs, *args, **kwargs)
        if obs.get("code", {}).get("coding"):
            evaluated.append((_effective_key(obs), time.time(), bool(outcome.messages_sent)))
        return outcome

    fhir_events.evaluate_observation = timed  # type: ignore[assignment]

    def snapshot(*_: object) -> None:
        tmp = out / f".{index}.tmp"
        tmp.write_text(json.dumps({"cpu_s": time.process_time(), "lock_wait_s": WRITE_LOCK.waited_s,
                                   "transactions": WRITE_LOCK.transactions, "evaluated": evaluated}))
        os.replace(tmp, out / f"{index}.json")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, snapshot)
    services = bootstrap(settings, clock=clock)
    host = worker_host(services, index, count)
    hold_timers(host)
    host.release_leases()
    (out / f"ready-{index}").touch()
    try:
        host.serve_forever(stop, idle_sleep_s=0.005)
    finally:
        services.close()


class Pool:
    """N bench workers over the data dir of `settings` (the caller holds its lock)."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings, self.count = settings, count
        self.out = _out_dir(settings)
        self.out.mkdir(exist_ok=True)
        self.supervisor = Supervisor(settings, count, target=bench_worker)

    def __enter__(self) -> Pool:
        self.supervisor.start()
        deadline = time.monotonic() + 120
        while not all((self.out / f"ready-{i}").exists() for i in range(self.count)):
            if time.monotonic() > deadline or self.supervisor.check():
                raise RuntimeError("the bench workers did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.supervisor.stop()

    def snapshot(self) -> list[dict[str, Any]]:
        for i in range(self.count):
            (self.out / f"{i}.json").unlink(missing_ok=True)
        for pid in self.supervisor.pids:
            assert pid is not None
            os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + 60
        while not all((self.out / f"{i}.json").exists() for i in range(self.count)):
            if time.monotonic() > deadline:
                raise RuntimeError("a bench worker did not answer")
            time.sleep(0.01)
        return [json.loads((self.out / f"{i}.json").read_text()) for i in range(self.count)]


def _drained(host: LocalHost) -> bool:
    """Every reading ingested and evaluated: the device queue and the event queue are empty (a
    worker acknowledges a batch after evaluating it in process)."""
    return not {t for t in host.bus.topics() if t != WORKFLOW_EVENTS}


def _wait_drained(host: LocalHost, timeout_s: float = 3600) -> None:
    deadline = time.monotonic() + timeout_s
    while not _drained(host):
        if time.monotonic() > deadline:
            raise RuntimeError(f"not drained in {timeout_s} s: {host.bus.topics()}")
        time.sleep(0.01)


def _sum(after: list[dict[str, Any]], before: list[dict[str, Any]], key: str) -> float:
    return sum(float(a[key]) - float(b[key]) for a, b in zip(after, before, strict=True))


def measure_throughput_workers(pool: Pool, host: LocalHost, msgs: list[bytes]) -> dict[str, float]:
    """Everything offered at once, drained by the workers; CPU per reading is the workers'."""
    before = pool.snapshot()
    t0, bench_cpu0 = time.perf_counter(), time.process_time()
    host.publish_device_messages(msgs)
    _wait_drained(host)
    elapsed, bench_cpu = time.perf_counter() - t0, time.process_time() - bench_cpu0
    after = pool.snapshot()
    n = len(msgs)
    return {"readings_per_s": round(n / elapsed, 1),
            "cpu_ms_per_reading": round(_sum(after, before, "cpu_s") * 1000 / n, 3),
            "publisher_cpu_ms_per_reading": round(bench_cpu * 1000 / n, 3),
            "write_lock_wait_ms_per_reading": round(_sum(after, before, "lock_wait_s") * 1000 / n, 3),
            "write_transactions_per_reading": round(_sum(after, before, "transactions") / n, 2),
            "readings_per_worker": [sum(1 for _ in a["evaluated"]) - len(b["evaluated"]) for a, b in zip(after, before,
                                                                                                       strict=True)]}


def measure_latency_workers(pool: Pool, host: LocalHost, msgs: list[bytes], rate: float) -> dict[str, float]:
    """A steady offered rate published by the bench; latency is accepted -> evaluated by a worker."""
    accepted: dict[float, float] = {}
    start = time.time()
    publish_paced(host, msgs, rate, accepted, between=lambda: time.sleep(0.002))
    _wait_drained(host)
    offered_s = time.time() - start
    evaluated: dict[float, float] = {}
    alerted: dict[float, float] = {}
    for snap in pool.snapshot():
        for key, at, sent_messages in snap["evaluated"]:
            if key in accepted and key not in evaluated:
                evaluated[key] = at
                if sent_messages:
                    alerted[key] = at
    lat = [(t - accepted[k]) * 1000 for k, t in evaluated.items()]
    alert = [(t - accepted[k]) * 1000 for k, t in alerted.items()]
    return {"rate": rate, "latency_readings": len(lat), "latency_alerts": len(alert),
            "p50_ms": round(pct(lat, 50), 1), "p99_ms": round(pct(lat, 99), 1),
            "alert_p99_ms": round(pct(alert, 99), 1), "latency_run_s": round(offered_s, 1)}
