"""Benchmark of the mapping-template engine. Prints figures; not a test.

    .venv/bin/python bench/ingest.py [--messages 20000] [--repeat 5] [--json]

Measures, on a realistic mixed stream (generic Vigil messages, HealthKit messages, IoT Hub
telemetry with its envelope, Google Fit datasets, Life365-style hub exports; each through its own
preset, as a deployment routes each source to its templates):

* normalization throughput (messages/s) beside plain `json.loads` of the same bytes in the same
  run; the ratio is the figure to watch (target: within 10x), the median of rounds that time both
  back to back (see `paired`);
* Observation building throughput: grouping + building new Observations (create), and merging a
  replay into the stored ones (noop), with the store replaced by a dict (pure engine cost).

Each figure is the median CPU time of `--repeat` runs. Last, end-to-end ingest of the generic stream into
the embedded store (the `bench_ingest` figure of bench/pipeline.py). `--json` prints the figures as
one JSON object instead.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingest.templates import group_measurements  # noqa: E402
from ingest.templates.presets import load_preset  # noqa: E402

START = datetime(2024, 5, 1, tzinfo=UTC)
SOURCES = {"vigil-generic": 0.5, "healthkit": 0.2, "iot-hub": 0.15, "google-fit": 0.1, "life365-hub": 0.05}


def generic(rng: random.Random, i: int) -> tuple[bytes, dict]:
    when = (START + timedelta(minutes=3 * i)).isoformat()
    patient = f"MRN-{i % 500:04d}"
    kind = i % 5
    if kind == 0:
        values = {"systolic": round(rng.gauss(132, 12)), "diastolic": round(rng.gauss(84, 8)),
                  "pulse": round(rng.gauss(72, 8))}
        msg = {"type": "blood_pressure", "values": values}
    elif kind == 1:
        msg = {"type": "body_weight", "values": {"weight": round(rng.gauss(190, 20), 1), "unit": "lb"}}
    elif kind == 2:
        msg = {"type": "glucose", "values": {"glucose": round(rng.gauss(6.0, 1.0), 1), "unit": "mmol/L"}}
    elif kind == 3:
        msg = {"type": "spo2", "values": {"percent": min(100, round(rng.gauss(96, 2)))}}
    else:
        msg = {"type": "heart_rate", "values": {"bpm": round(rng.gauss(74, 9))}}
    msg.update(deviceId=f"dev-{i % 700:04d}", patientId=patient, time=when)
    return json.dumps(msg).encode(), {}


def healthkit(rng: random.Random, i: int) -> tuple[bytes, dict]:
    when = (START + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
    field, value, unit = rng.choice([("heartRate", round(rng.gauss(74, 9), 1), "count/min"),
                                     ("stepCount", float(rng.randint(0, 900)), "count"),
                                     ("oxygenSaturation", round(rng.uniform(0.9, 1.0), 2), "%"),
                                     ("bodyMass", round(rng.gauss(180, 20), 1), "lb")])
    msg = {"uuid": f"{i:032x}", "startDate": when, "endDate": when, field: value, "unit": unit,
           "deviceId": f"iphone-{i % 300}", "patientId": f"MRN-{i % 300:04d}"}
    return json.dumps(msg).encode(), {}


def iot_hub(rng: random.Random, i: int) -> tuple[bytes, dict]:
    when = (START + timedelta(seconds=30 * i)).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")
    body = {"HeartRate": round(rng.gauss(80, 10)), "SpO2": min(100, round(rng.gauss(96, 2))),
            "RespiratoryRate": round(rng.gauss(16, 2)), "BatteryLevel": rng.randint(5, 100)}
    if i % 4 == 0:
        body.update(Systolic=round(rng.gauss(128, 12)), Diastolic=round(rng.gauss(80, 8)))
    props = {"properties": {"iothub-creation-time-utc": when, "patientId": f"MRN-{i % 100:04d}"},
             "system_properties": {"iothub-connection-device-id": f"monitor-{i % 100}",
                                   "iothub-enqueuedtime": when}}
    return json.dumps(body).encode(), props


def google_fit(rng: random.Random, i: int) -> tuple[bytes, dict]:
    base = int((START + timedelta(hours=i)).timestamp() * 1e9)
    points = [
        {
            "startTimeNanos": str(base + k * 60_000_000_000),
            "endTimeNanos": str(base + k * 60_000_000_000),
            "dataTypeName": "com.google.heart_rate.bpm",
            "value": [{"fpVal": round(rng.gauss(75, 8), 1), "mapVal": []}],
            "modifiedTimeMillis": str(base // 1_000_000),
        }
        for k in range(5)
    ]
    msg = {"minStartTimeNs": points[0]["startTimeNanos"], "maxEndTimeNs": points[-1]["endTimeNanos"],
           "dataSourceId": "derived:com.google.heart_rate.bpm:com.google.android.gms:merge_heart_rate_bpm",
           "point": points, "patientIdentifier": f"user-{i % 50}", "deviceIdentifier": f"user-{i % 50}.gms"}
    return json.dumps(msg).encode(), {}


def life365(rng: random.Random, i: int) -> tuple[bytes, dict]:
    when = (START + timedelta(hours=i)).isoformat()
    msg = {"hubId": f"HUB-{i % 40}", "exportedAt": when, "patient": {"mrn": f"MRN-{i % 40:04d}"}, "readings": [
        {"readingId": f"r{i}-1", "deviceSerial": f"BP-{i % 40}", "kind": "BP", "takenAt": when,
         "sys": round(rng.gauss(135, 12)), "dia": round(rng.gauss(85, 8)), "pulse": round(rng.gauss(72, 8)),
         "uom": "mmHg"},
        {"readingId": f"r{i}-2", "deviceSerial": f"SC-{i % 40}", "kind": "WEIGHT", "takenAt": when,
         "value": round(rng.gauss(190, 20), 1), "uom": "lbs"}]}
    return json.dumps(msg).encode(), {}


MAKERS: dict[str, Callable[[random.Random, int], tuple[bytes, dict]]] = {
    "vigil-generic": generic, "healthkit": healthkit, "iot-hub": iot_hub, "google-fit": google_fit,
    "life365-hub": life365,
}


def stream(n: int, seed: int = 7) -> list[tuple[str, bytes, dict]]:
    rng = random.Random(seed)
    names, weights = zip(*SOURCES.items(), strict=True)
    return [(source, *MAKERS[source](rng, i)) for i, source in enumerate(rng.choices(names, weights, k=n))]


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median CPU seconds of this process over `repeat` runs. Both sides of every ratio are
    single-threaded and CPU-bound, and CPU time does not count the moments another process on a
    shared machine had the core, which wall-clock time would charge to whichever side was running."""
    runs = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        runs.append(time.process_time() - t0)
    return statistics.median(runs)


def paired(first: Callable[[], object], second: Callable[[], object], repeat: int) -> tuple[float, float, float]:
    """(median CPU s of `first`, of `second`, median of the per-round ratios second/first). Each round
    times the two back to back (`first` before and after `second`), so a ratio compares runs made
    under the same load: on a shared machine the load changes between rounds far more than within one."""
    a_runs, b_runs, ratios = [], [], []
    for _ in range(repeat):
        a0 = timed(first, 1)
        b1 = timed(second, 1)
        a1 = timed(first, 1)
        a_runs.append((a0 + a1) / 2)
        b_runs.append(b1)
        ratios.append(b1 / a_runs[-1])
    return statistics.median(a_runs), statistics.median(b_runs), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    figures: dict[str, object] = {}

    def say(line: str) -> None:
        if not args.json:
            print(line)

    presets = {name: load_preset(name) for name in SOURCES}
    items = stream(args.messages)
    payloads = [p for _, p, _ in items]
    ingested = datetime.now(UTC)

    def parse_all() -> None:
        for p in payloads:
            json.loads(p)

    def normalize_all() -> None:
        for source, payload, props in items:
            presets[source][0].normalize(payload, ingested_at=ingested, **props)

    # Both timed loops drop what they produce, so neither pays for keeping 20k results alive (the
    # garbage collector's passes over them would otherwise be charged to one side only).
    t_json, t_norm, ratio = paired(parse_all, normalize_all, args.repeat)
    results = [presets[source][0].normalize(payload, ingested_at=ingested, **props) for source, payload, props in items]
    measurements = [m for r in results for m in r.measurements]
    failed = sum(1 for r in results if r.errors)
    figures |= {"messages": len(items), "measurements": len(measurements), "dead_lettered": failed,
                "json_loads_msgs_per_s": round(len(items) / t_json), "normalize_msgs_per_s": round(len(items) / t_norm),
                "normalize_ratio_to_json_loads": round(ratio, 2), "sources": {}}
    say(f"mixed stream: {len(items)} messages from {len(SOURCES)} sources -> {len(measurements)} measurements"
        f" ({failed} dead-lettered)")
    say(f"  json.loads          {len(items) / t_json:>10,.0f} msg/s")
    say(f"  normalize           {len(items) / t_norm:>10,.0f} msg/s   ratio {ratio:.1f}x json.loads")

    for source in SOURCES:
        subset = [(s, p, props) for s, p, props in items if s == source]
        if not subset:
            continue
        devices = presets[source][0]
        def parse_subset(sub: list = subset) -> None:
            for _, p, _ in sub:
                json.loads(p)

        def normalize_subset(sub: list = subset, d=devices) -> None:
            for _, p, props in sub:
                d.normalize(p, ingested_at=ingested, **props)

        tj, tn, sub_ratio = paired(parse_subset, normalize_subset, args.repeat)
        figures["sources"][source] = {  # type: ignore[index]
            "messages": len(subset), "normalize_msgs_per_s": round(len(subset) / tn), "ratio": round(sub_ratio, 2)}
        say(f"    {source:<14} {len(subset):>6} msgs  {len(subset) / tn:>9,.0f} msg/s   ratio {sub_ratio:.1f}x")

    # Observation building: one FHIR template set per source, as for normalization.
    by_source: dict[str, list] = {}
    for (source, _, _), r in zip(items, results, strict=True):
        by_source.setdefault(source, []).extend(r.measurements)
    store: dict[str, dict] = {}
    changes_made: list[int] = [0]

    def build(existing: dict[str, dict] | None) -> None:
        count = 0
        for source, ms in by_source.items():
            fhir = presets[source][1]
            for group in group_measurements(ms):
                pid = f"pat-{group.patient_id}"
                did = f"dev-{group.device_id}"
                lookup = (existing or {}).get
                for change in fhir.observations(group, patient_id=pid, device_id=did, existing=lookup, now=ingested):
                    count += 1
                    if existing is None:
                        store[change.id] = change.resource
        changes_made[0] = count

    t_create = timed(lambda: build(None), args.repeat)
    n_obs = changes_made[0]
    t_merge = timed(lambda: build(store), args.repeat)
    figures |= {"observations": n_obs, "build_obs_per_s": round(n_obs / t_create),
                "merge_replay_obs_per_s": round(n_obs / t_merge)}
    say(f"observations: {n_obs} from {len(measurements)} measurements")
    say(f"  build (create)      {n_obs / t_create:>10,.0f} obs/s   "
        f"({len(measurements) / t_create:,.0f} measurements/s)")
    say(f"  merge replay (noop) {n_obs / t_merge:>10,.0f} obs/s")
    # End to end into the embedded SQLite store: templates + identity lookup + one FHIR
    # transaction per batch of 100, through the same handler the Event Hubs trigger calls.
    import tempfile

    from bench.pipeline import bench_ingest

    with tempfile.TemporaryDirectory() as tmp:
        figures |= bench_ingest(Path(tmp), min(args.messages, 10000), 200, quiet=args.json)
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
