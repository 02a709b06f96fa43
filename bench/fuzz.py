"""Fuzz the ingest handler and account for every message from the stores. Prints figures; not a test.

    .venv/bin/python bench/fuzz.py [--count 10000] [--seed 1] [--json]

Generates batches of device messages for every shipped preset with hypothesis (the strategies of
tests/support/ingest_fuzz.py: realistic payloads, hostile field values, same-time repeats valid and
invalid, and poison bodies: nesting past the parser's limit, 5,000-digit integers, lone surrogates,
timestamps outside years 1-9999, megabyte time-zone names, broken JSON), until `--count` messages
have been generated. Each batch goes through `handle_device_messages` into a fresh real SQLite FHIR
store and dead-letter store; then what became of each message is read back from the stores:

* received, written, superseded, dead-lettered (by reason), unaccounted (no outcome in the stores),
  crashed (messages of batches where the handler raised);
* unspecific: dead letters whose reason names no cause; phantoms: Observations no message that
  was not dead-lettered explains; mismatches: messages whose outcome in the handler's report differs
  from the stores'.

Acceptance: 0 crashed, 0 unaccounted, 0 unspecific.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis.errors import NonInteractiveExampleWarning  # noqa: E402

from handlers.ingest import handle_device_messages  # noqa: E402
from ingest.templates.presets import list_presets, preset_paths  # noqa: E402
from ingest.templates.reload import TemplateFiles  # noqa: E402
from tests.support.ingest_fuzz import POISON_CLASSES, World, account, batches  # noqa: E402

# Stores in memory-backed files where the machine has them: the figures are about accounting, not disks.
SCRATCH = "/dev/shm" if Path("/dev/shm").is_dir() else None


def run(count: int, base_seed: int) -> dict[str, Any]:
    totals: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    unspecific: Counter[str] = Counter()
    templates = {p: TemplateFiles(*preset_paths(p)) for p in list_presets()}
    started = time.perf_counter()

    def one(preset: str, batch: list) -> None:
        totals["batches"] += 1
        totals["received"] += len(batch)
        with tempfile.TemporaryDirectory(dir=SCRATCH) as directory:
            world = World(Path(directory), preset, templates[preset])
            try:
                try:
                    report = handle_device_messages(batch, world.deps)
                except Exception as exc:  # what the bench is looking for: count, name and go on
                    totals["crashed"] += len(batch)
                    where = traceback.extract_tb(exc.__traceback__)[-1]
                    errors[f"{type(exc).__name__} at {Path(where.filename).name}:{where.lineno}"] += 1
                    return
                seen = account(world, batch)
            finally:
                world.close()
        for outcome in seen.outcomes:
            totals[outcome] += 1
        reasons.update(seen.reasons)
        unspecific.update(seen.unspecific)
        totals["phantoms"] += len(seen.phantoms)
        totals["mismatches"] += sum(a != b for a, b in zip(report.outcomes, seen.outcomes, strict=True))

    round_ = 0
    while totals["received"] < count:
        for preset in list_presets():
            _step(preset, base_seed * 1000 + round_, one)()
            if totals["received"] >= count:
                break
        round_ += 1
    elapsed = time.perf_counter() - started
    return {
        "received": totals["received"], "batches": totals["batches"], "written": totals["written"],
        "superseded": totals["superseded"], "dead_lettered": totals["dead_lettered"],
        "dead_lettered_by_reason": dict(reasons.most_common()), "unaccounted": totals["unaccounted"],
        "crashed": totals["crashed"], "crashes": dict(errors), "unspecific_reasons": dict(unspecific),
        "phantom_observations": totals["phantoms"], "report_mismatches": totals["mismatches"],
        "presets": list_presets(), "poison_classes": list(POISON_CLASSES), "seconds": round(elapsed, 1),
    }


def _step(preset: str, seed_value: int, one: Any) -> Any:
    @seed(seed_value)
    @settings(max_examples=50, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(batches(preset))
    def step(batch: list) -> None:
        one(preset, batch)

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="messages to generate (default 10000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated batches (default 1)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # each dead-lettered batch logs a warning: thousands of lines
    warnings.simplefilter("ignore", NonInteractiveExampleWarning)
    figures = run(args.count, args.seed)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"fuzzed ingest: {figures['received']} messages in {figures['batches']} batches "
              f"over {len(figures['presets'])} presets ({figures['seconds']} s)")
        for name in ("written", "superseded", "dead_lettered"):
            print(f"  {name:<22}{figures[name]:>8}")
        for reason, n in figures["dead_lettered_by_reason"].items():
            print(f"    {reason:<20}{n:>8}")
        for name in ("unaccounted", "crashed", "phantom_observations", "report_mismatches"):
            print(f"  {name:<22}{figures[name]:>8}")
        print(f"  unspecific reasons    {sum(figures['unspecific_reasons'].values()):>8}")
        for crash, n in figures["crashes"].items():
            print(f"    crash: {crash} x{n}")
    ok = figures["crashed"] == figures["unaccounted"] == 0 and not figures["unspecific_reasons"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
