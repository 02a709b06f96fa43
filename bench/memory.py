"""Memory over a long stream of device messages. Prints figures; not a test.

    .venv/bin/python bench/memory.py [--json] [--messages 1000000] [--patients 1000] [--chunk 4000]
                                     [--sample-every 50000] [--trace] [--trace-top 15] [--data-dir DIR]

Streams `--messages` device messages of the demo's mix (the generator of `bench/pipeline.py`) over
`--patients` enrolled patients through the local host, the pipeline whole (ingest, FHIR events, rule
evaluation, alerts, the message outbox), in chunks: publish a chunk, `run_until_idle`, repeat. Every
`--sample-every` messages it records the process's resident set (VmRSS of /proc/self/status, the
current figure, not the peak), the garbage collector's count of tracked objects, the data directory's
size on disk and the row count of each table of its SQLite files (a table that grows with the
messages but is not a store of record -- bus, outbox -- is a leak on disk).

Flatness figures: `rss_growth_mb`, RSS at the end minus RSS after the first 10 % (warm-up: imports,
SQLite page caches, the bounded caches filling), and `rss_slope_mb_per_100k` over the last 50 % (a
least-squares line through those samples). `--trace` turns on `tracemalloc` (slow: several times the
run time) and prints the allocation sites that grew most between the warm-up sample and the end.

Message times follow the pipeline bench (`bench/pipeline_workload.py`): round robin over the
patients, `WORKLOAD_DAYS` (5) in all, ending an hour before now (readings from the future are
refused). At 1,000,000 messages over 1,000 patients that is one message a patient every ~7 minutes,
each kind about every half hour.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sqlite3
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent), *(p for p in sys.path if Path(p or ".").resolve() != _HERE)]

from bench.pipeline_workload import WORKLOAD_DAYS, WORKLOAD_START, enroll, messages  # noqa: E402
from runtime.bootstrap import bootstrap  # noqa: E402
from runtime.host import LocalHost  # noqa: E402
from runtime.settings import Settings  # noqa: E402

MB = 1024 * 1024


def rss_mb() -> dict[str, float]:
    """The resident set now (VmRSS), in MB, and its anonymous part (RssAnon: the heap, SQLite's page
    caches) and file-backed part (RssFile: mapped libraries and files), proc(5); `ru_maxrss` would
    only give the peak."""
    found = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                found[key] = round(int(value.split()[0]) / 1024, 1)
    if "VmRSS" not in found:
        raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")
    return found


def stream(total: int, patients: int, chunk: int) -> Iterator[list[bytes]]:
    """`messages(total, patients)` of the pipeline bench, produced a chunk at a time so the bench
    does not hold a million messages itself. Each chunk is that generator's output for `chunk`
    messages (a multiple of 4 x patients, so patient and kind follow the same round robin) with
    each message's time moved to its place in the whole stream."""
    step = min(60.0, WORKLOAD_DAYS * 86400 / max(total, 1))
    for start in range(0, total, chunk):
        size = min(chunk, total - start)
        out = []
        for j, body in enumerate(messages(size, patients, seed=1 + start // chunk)):
            m = json.loads(body)
            m["time"] = (WORKLOAD_START + timedelta(seconds=step * (start + j))).isoformat()
            out.append(json.dumps(m).encode())
        yield out


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / MB


def table_rows(path: Path) -> dict[str, int]:
    """Rows per table of every SQLite file of the data dir, read through a separate read-only
    connection (WAL readers do not block the host's writer)."""
    rows: dict[str, int] = {}
    for db in sorted(path.glob("*.db")):
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for name in names:
                if name.startswith("sqlite_"):
                    continue
                rows[f"{db.stem}.{name}"] = con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
        finally:
            con.close()
    return rows


def slope_per_100k(points: list[tuple[int, float]]) -> float | None:
    if len(points) < 2:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return statistics.linear_regression(xs, ys).slope * 100_000


def run(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    if args.chunk % (4 * args.patients) and args.chunk < args.messages:
        raise SystemExit(f"--chunk {args.chunk} must be a multiple of 4 x --patients ({4 * args.patients})")
    services = bootstrap(Settings.from_env({}, data_dir=data_dir))
    host = LocalHost(services)
    host.acquire()
    enroll(services, args.patients)
    host.run_until_idle()
    if args.trace:
        tracemalloc.start(args.trace_frames)
    samples: list[dict[str, Any]] = []
    snapshots: dict[int, tracemalloc.Snapshot] = {}
    warmup = max(args.sample_every, args.messages // 10)

    def sample(done: int, elapsed: float) -> None:
        gc.collect()
        rss = rss_mb()
        s: dict[str, Any] = {"messages": done, "rss_mb": rss["VmRSS"], "rss_anon_mb": rss.get("RssAnon"),
                             "rss_file_mb": rss.get("RssFile"), "gc_objects": len(gc.get_objects()),
                             "data_dir_mb": round(dir_mb(data_dir), 1),
                             "wal_mb": round(sum(w.stat().st_size for w in data_dir.glob("*-wal")) / MB, 1),
                             "elapsed_s": round(elapsed, 1)}
        if args.trace:
            s["traced_mb"] = round(tracemalloc.get_traced_memory()[0] / MB, 1)
            if done in (0, warmup) or done >= args.messages:
                snapshots[done] = tracemalloc.take_snapshot()
        s["rows"] = table_rows(data_dir)
        samples.append(s)
        if not args.json:
            rows = " ".join(f"{k}={v}" for k, v in s["rows"].items() if v)
            traced = f" traced {s['traced_mb']:7.1f} MB" if args.trace else ""
            print(f"{done:>9,} msgs {elapsed:8.0f} s  rss {s['rss_mb']:7.1f} MB (anon {s['rss_anon_mb']:7.1f})"
                  f"{traced}  objects {s['gc_objects']:>9,}  disk {s['data_dir_mb']:8.1f} MB"
                  f" (wal {s['wal_mb']:.1f})  {rows}", flush=True)

    t0 = time.perf_counter()
    sample(0, 0.0)
    done, next_sample = 0, args.sample_every
    for chunk in stream(args.messages, args.patients, args.chunk):
        host.publish_device_messages(chunk)
        if not host.run_until_idle(timeout_s=3600):
            raise SystemExit(f"the host did not drain a chunk within an hour (at {done} messages)")
        done += len(chunk)
        del chunk
        # Samples fall on chunk boundaries: the first boundary at or past each multiple.
        if done >= next_sample or done == args.messages:
            sample(done, time.perf_counter() - t0)
            while next_sample <= done:
                next_sample += args.sample_every
    elapsed = time.perf_counter() - t0

    after_warmup = next(s for s in samples if s["messages"] >= warmup)
    last = samples[-1]
    tail = [(s["messages"], s["rss_mb"]) for s in samples if s["messages"] >= args.messages // 2]
    slope = slope_per_100k(tail)
    out: dict[str, Any] = {
        "messages": args.messages, "patients": args.patients, "chunk": args.chunk,
        "elapsed_s": round(elapsed, 1), "readings_per_s": round(args.messages / elapsed, 1),
        "warmup_messages": after_warmup["messages"],
        "rss_mb_start": samples[0]["rss_mb"], "rss_mb_after_warmup": after_warmup["rss_mb"],
        "rss_mb_end": last["rss_mb"], "rss_growth_mb": round(last["rss_mb"] - after_warmup["rss_mb"], 1),
        "rss_anon_mb_after_warmup": after_warmup["rss_anon_mb"], "rss_anon_mb_end": last["rss_anon_mb"],
        "rss_slope_mb_per_100k": None if slope is None else round(slope, 2),
        "gc_objects_after_warmup": after_warmup["gc_objects"], "gc_objects_end": last["gc_objects"],
        "data_dir_mb": last["data_dir_mb"], "rows_end": last["rows"],
        "samples": [{k: v for k, v in s.items() if k != "rows"} for s in samples],
    }
    if args.trace and warmup in snapshots and args.messages in snapshots:
        stats = snapshots[args.messages].compare_to(snapshots[warmup], "traceback" if args.trace_frames > 1
                                                    else "lineno")
        out["trace_top"] = [{"kib": round(st.size_diff / 1024, 1), "count": st.count_diff,
                             "where": [f"{fr.filename}:{fr.lineno}" for fr in st.traceback]}
                            for st in stats[:args.trace_top]]
    host.release()
    services.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--patients", type=int, default=1_000)
    ap.add_argument("--chunk", type=int, default=4_000, help="messages published before each run_until_idle")
    ap.add_argument("--sample-every", type=int, default=50_000)
    ap.add_argument("--trace", action="store_true", help="tracemalloc on (slow): the sites that grew most")
    ap.add_argument("--trace-frames", type=int, default=1, help="traceback depth of --trace")
    ap.add_argument("--trace-top", type=int, default=15)
    ap.add_argument("--data-dir", type=Path, help="keep the data here (default: a temporary directory)")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # a bench prints figures, not the pipeline's warnings
    if args.data_dir:
        args.data_dir.mkdir(parents=True, exist_ok=True)
        figures = run(args, args.data_dir)
    else:
        with tempfile.TemporaryDirectory() as d:
            figures = run(args, Path(d) / "data")
    if args.json:
        print(json.dumps(figures))
        return
    for key, value in figures.items():
        if key == "samples":
            continue
        if key == "trace_top":
            print("grew most since warm-up (tracemalloc):")
            for t in value:
                print(f"  {t['kib']:>10,.1f} KiB {t['count']:>+9,} blocks  {' <- '.join(t['where'])}")
            continue
        print(f"{key:<26} {value}")


if __name__ == "__main__":
    main()
