"""Rule evaluation benchmark: time per event for 100 rules over a 90-day window, and backtest throughput.

    .venv/bin/python -m bench.rules [--events 300] [--patients 20]

The 100 rules all read blood pressure, so every BP event evaluates all of them (the worst case for
one event): thresholds, goal bounds, counts, changes, mean/min/max, consecutive readings, all/any/not
and absence, over windows of 1 to 14 days. The patient has 90 days of 4 readings a day of BP, weight,
heart rate, SpO2 and glucose. Target: under 1 ms per event.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

# Run as a script (`python bench/rules.py`), this file's folder comes first on sys.path and its own
# name would shadow the `rules` package: put the repository root first instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent), *(p for p in sys.path if Path(p or ".").resolve() != _HERE)]

from common.clock import iso  # noqa: E402
from rules.backtest import PatientData, backtest  # noqa: E402
from rules.enrollment import PatientContext  # noqa: E402
from rules.evaluate import RuleIndex, evaluate  # noqa: E402
from rules.loader import load_rulesets, parse_ruleset  # noqa: E402
from rules.readings import Reading, readings_from_observation  # noqa: E402
from rules.window import History  # noqa: E402

START = datetime(2025, 1, 1, tzinfo=UTC)
TZ = ZoneInfo("America/Chicago")


def hundred_rules() -> str:
    """A ruleset of 100 rules as a care manager would write them (YAML), all triggered by BP."""
    rules = []
    for i in range(100):
        kind = i % 10
        sbp, window = 150 + i % 40, ("days: " + str(1 + i % 7)) if i % 2 else f"within: {24 * (1 + i % 14)}h"
        when = {
            0: f"reading: systolic_bp >= {170 + i % 20}",
            1: f"reading: {{metric: systolic_bp, op: '>', value: {{goal: systolic_bp, bound: high, default: {sbp}}}}}",
            2: f"count: {{where: 'systolic_bp >= {sbp}', at_least: {3 + i % 4}, {window}}}",
            3: f"change: {{metric: systolic_bp, how: {'max_rise' if i % 3 else 'first_to_last'}, op: '>=', value: 40, {window}}}",
            4: f"aggregate: {{metric: systolic_bp, stat: {('mean', 'min', 'max')[i % 3]}, op: '>=', value: {sbp}, {window}}}",
            5: f"consecutive: {{where: 'diastolic_bp >= {95 + i % 10}', count: {3 + i % 3}, {window}}}",
            6: f"all: [{{reading: 'systolic_bp >= {sbp}'}}, {{change: {{metric: body_weight, op: '>=', value: '2 [lb_av]', days: 1}}}}]",
            7: f"any: [{{reading: 'diastolic_bp >= {110 + i % 10}'}}, {{aggregate: {{metric: heart_rate, stat: max, op: '>=', value: 130, days: 1}}}}]",
            8: f"all: [{{reading: 'systolic_bp >= {sbp}'}}, {{not: {{absence: {{metric: spo2, days: 2}}}}}}]",
            9: f"all: [{{reading: 'systolic_bp >= {sbp - 20}'}}, {{count: {{where: 'glucose > 180', at_least: 2, days: 1}}}}]",
        }[kind]
        rules.append(f"  - id: r{i:03d}\n    title: Rule {i}\n    severity: moderate\n    when:\n      {when}\n")
    head = "ruleset: bench\ntitle: Bench\nprogram: {id: bench, category: [bench]}\nrules:\n"
    return head + "".join(rules)


def patient_readings(rng: random.Random, patient: str, days: int = 90) -> list[Reading]:
    out: list[Reading] = []
    weight = 80.0
    for day in range(days):
        weight += rng.gauss(0, 0.3)
        for slot, hour in enumerate((7, 12, 17, 21)):
            at = START + timedelta(days=day, hours=hour, minutes=rng.randint(0, 20))
            ref = f"Observation/{patient}-{day}-{slot}"
            out += [Reading("systolic_bp", rng.gauss(138, 14), at, ref + "-bp"),
                    Reading("diastolic_bp", rng.gauss(84, 8), at, ref + "-bp"),
                    Reading("heart_rate", rng.gauss(75, 10), at, ref + "-hr"),
                    Reading("body_weight", weight + rng.gauss(0, 0.2), at, ref + "-w"),
                    Reading("spo2", min(100.0, rng.gauss(95, 2)), at, ref + "-o2"),
                    Reading("glucose", rng.gauss(140, 35), at, ref + "-g")]
    return out


def bp_observation(reading_sbp: Reading, reading_dbp: Reading) -> dict:
    def comp(code: str, value: float) -> dict:
        return {"code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "valueQuantity": {"value": round(value), "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}

    return {"resourceType": "Observation", "id": reading_sbp.ref.split("/")[1], "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "subject": {"reference": "Patient/bench"}, "effectiveDateTime": iso(reading_sbp.effective),
            "component": [comp("8480-6", reading_sbp.value), comp("8462-4", reading_dbp.value)]}


def bench_events(events: int, *, quiet: bool = False) -> dict[str, float]:
    ruleset = parse_ruleset(hundred_rules(), "bench-100-rules.yaml")
    index = RuleIndex([ruleset])
    readings = patient_readings(random.Random(7), "bench")
    ctx = PatientContext("Patient/bench", tz=TZ)
    bp = sorted((r for r in readings if r.metric == "systolic_bp"), key=lambda r: r.effective)[-events:]
    dbp = {r.ref: r for r in readings if r.metric == "diastolic_bp"}
    pure, full, explained, fired = [], [], [], 0
    for sbp in bp:
        window = [r for r in readings if r.effective <= sbp.effective]
        observation = bp_observation(sbp, dbp[sbp.ref])
        t0 = time.perf_counter()
        trigger = readings_from_observation(observation)
        history = History(window, trigger)
        t1 = time.perf_counter()
        firings = evaluate(index, trigger, history, ctx)
        t2 = time.perf_counter()
        for firing in firings:
            firing.explanation()
        t3 = time.perf_counter()
        fired += len(firings)
        full.append(t2 - t0)
        pure.append(t2 - t1)
        explained.append(t3 - t1)
    per_metric = len(window) // 6
    figures: dict[str, float] = {"events": events, "window_readings": len(window),
                                 "rules_fired_per_event": round(fired / events, 1)}
    for name, seconds in (("evaluate", pure), ("evaluate_explained", explained), ("parse_build_evaluate", full)):
        figures.update({f"{name}_{k}_ms": v for k, v in _times(seconds).items()})
    if not quiet:
        print(f"per event, 100 rules all triggered, 90-day window ({per_metric} readings per metric, "
              f"{len(window)} in all), {events} BP events, {fired / events:.1f} rules fired per event:")
        _print_times("  evaluate (rules only, History built)", pure)
        _print_times("  evaluate + explanation text of every firing", explained)
        _print_times("  parse trigger Observation + build History + evaluate", full)
    return figures


def _times(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {"median": round(statistics.median(ms), 3), "p95": round(ms[int(0.95 * (len(ms) - 1))], 3),
            "max": round(ms[-1], 3)}


def _print_times(label: str, seconds: list[float]) -> None:
    t = _times(seconds)
    print(f"{label}: median {t['median']:.3f} ms, p95 {t['p95']:.3f} ms, max {t['max']:.3f} ms")


def bench_backtest(patients: int, *, quiet: bool = False) -> dict[str, float]:
    rng = random.Random(11)
    cohort = {f"Patient/{i}": PatientData(PatientContext(f"Patient/{i}", tz=TZ, enrolled_since=START),
                                         patient_readings(rng, str(i))) for i in range(patients)}
    until = START + timedelta(days=90)
    figures: dict[str, float] = {}
    for key, label, rulesets in (("library", "default library (6 rulesets, 38 rules)", load_rulesets("rules/library")),
                                 ("bench_100_rules", "100-rule bench ruleset",
                                  [parse_ruleset(hundred_rules(), "bench.yaml")])):
        t0 = time.perf_counter()
        report = backtest(rulesets, cohort, START, until)
        elapsed = time.perf_counter() - t0
        figures[f"backtest_{key}_readings_per_s"] = round(report.readings / elapsed)
        if not quiet:
            print(f"backtest, {label}: {report.readings} readings of {patients} patients in {elapsed:.2f} s "
                  f"= {report.readings / elapsed:,.0f} readings/s; "
                  f"{sum(report.alerts.values())} alerts, {report.patient_weeks:.0f} patient-weeks")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--patients", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    figures = bench_events(args.events, quiet=args.json)
    figures.update(bench_backtest(args.patients, quiet=args.json))
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
