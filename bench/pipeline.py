"""Benchmark of the pipeline on the embedded adapters. Prints figures; not a test.

    .venv/bin/python bench/pipeline.py [--json] [--workers 1] [--messages 4000] [--patients 1000]
                                       [--history-days 90] [--rate 1000] [--rate-seconds 4]
                                       [--http-readings 400] [--details]

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
- `write_lock_wait_ms_per_reading`: time the pumping processes spent in `BEGIN IMMEDIATE`, waiting
  for SQLite's one write lock (`common.sqlite_db.WRITE_LOCK`), per reading of the throughput phase.
With `--workers N` (N >= 1) the throughput and latency phases run in N worker processes as
`vigil serve --workers N` runs them (bench/pipeline_workers.py); the bench process holds the data
dir and publishes. `--workers 0` pumps in the bench process, as one `vigil serve` did before workers.
The history is written before the clock starts, in transactions of 1,000 readings.
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
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where bench/http.py would shadow the
# standard library's `http` package: put the repository root there instead (bench/ is then a
# namespace package, which the worker processes import the same way).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent), *(p for p in sys.path if Path(p or ".").resolve() != _HERE)]

from bench.pipeline_details import bench_ingest, bench_latency, bench_pipeline, bench_store  # noqa: E402
from bench.pipeline_measure import (  # noqa: E402
    measure_floors,
    measure_http_requests,
    measure_latency,
    measure_throughput,
)
from bench.pipeline_workers import Pool, measure_latency_workers, measure_throughput_workers  # noqa: E402
from bench.pipeline_workload import enroll, hold_timers, messages, write_history  # noqa: E402
from fhirstore.paging import search_all  # noqa: E402
from runtime.bootstrap import Services, bootstrap  # noqa: E402
from runtime.host import LocalHost  # noqa: E402
from runtime.settings import Settings  # noqa: E402


def workload(tmp: Path, name: str, patients: int, history_days: int, workers: int) -> tuple[Services, LocalHost]:
    services = bootstrap(Settings.from_env({}, data_dir=tmp / name, workers=max(1, workers)))
    host = LocalHost(services)
    hold_timers(host)
    host.acquire()
    enroll(services, patients)
    host.run_until_idle()  # the enrollment's own events
    write_history(services, patients, history_days)
    return services, host


def run(args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    total = args.messages + int(args.rate * args.rate_seconds)
    msgs = messages(total, args.patients)
    out: dict[str, object] = {"workers": args.workers, "messages": args.messages, "patients": args.patients,
                              "history_days": args.history_days}
    t0 = time.perf_counter()
    services, host = workload(tmp, "pipeline", args.patients, args.history_days, args.workers)
    out["history_write_s"] = round(time.perf_counter() - t0, 1)
    if args.workers == 0:
        out.update(measure_throughput(host, msgs[:args.messages]))
        out.update(measure_latency(host, msgs[args.messages:], args.rate))
    else:
        with Pool(services.settings, args.workers) as pool:
            out.update(measure_throughput_workers(pool, host, msgs[:args.messages]))
            out.update(measure_latency_workers(pool, host, msgs[args.messages:], args.rate))
    comms = search_all(services.store, "Communication", {"_count": "1000"})
    out["alert_messages"] = len(comms)
    # A correctness check beside the figures: every message key recorded once, however many workers.
    keys = Counter(c["identifier"][0]["value"] for c in comms if c.get("identifier"))
    out["duplicate_message_keys"] = sum(1 for n in keys.values() if n > 1)
    out["messages_by_category"] = dict(Counter(str((c.get("category") or [{}])[0].get("text")
                                                   or (c.get("category") or [{}])[0].get("coding", [{}])[0].get("code"))
                                               for c in comms))
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
    ap.add_argument("--workers", type=int, default=1,
                    help="worker processes for the throughput and latency phases (0: the bench process pumps)")
    ap.add_argument("--messages", type=int, default=4000, help="readings offered at once (throughput)")
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--history-days", type=int, default=90)
    ap.add_argument("--rate", type=float, default=1000.0, help="steady offered rate for latency, readings/s")
    ap.add_argument("--rate-seconds", type=float, default=4.0)
    ap.add_argument("--http-readings", type=int, default=400,
                    help="readings through the HTTP adapter (0: skip; at most 2000, to bound the run)")
    ap.add_argument("--details", action="store_true", help="also the store, ingest and backlog figures")
    ap.add_argument("--store-writes", type=int, default=10000)
    args = ap.parse_args()
    if not 0 <= args.workers <= 32:
        ap.error("--workers must be between 0 and 32")
    args.http_readings = min(args.http_readings, 2000)
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
        print(f"{key:<32} {value}")


if __name__ == "__main__":
    main()
