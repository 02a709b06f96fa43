"""Chaos benchmark: SIGKILL the local host at random moments during a stream, restart it, compare.

    .venv/bin/python bench/chaos.py [--kills 20] [--patients 40] [--days 25] [--seed 7] [--json]

A stream of device messages (4 per patient-day; even-numbered patients have crisis blood pressure
on three days, odd-numbered ones, also in the heart-failure program, gain weight overnight twice:
alerts open, update, raise Flags and send messages) is published onto the local bus at a
steady pace while `vigil serve` runs on it. The chaos run kills the host with SIGKILL at random
moments (some while it is still starting, most while it is working) and starts it again each
time; the clean run is the same stream with no kill. Both runs use a fixed clock (`VIGIL_AS_OF`)
and the same signing key, so their output is comparable identifier by identifier.

Compared: the identifier sets of Observations, episodes (DetectedIssue, Task, Flag) and messages
(Communication, outbox files). "lost" = in the clean run, not in the chaos run; "duplicated" =
one identifier on several resources, or an Observation rewritten (version > 1), or a message the
clean run did not send ("extra"). The time-driven sweeps (absence of data, reminders, retention)
are disabled in both runs with the Functions host's `AzureWebJobs.<name>.Disabled` setting:
what they do depends on when their wall-clock schedule happens to fire, not on the crash.
Prints figures; exits 1 if anything was lost or duplicated.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ comes first on sys.path, where bench/http.py would shadow the standard
# library's `http` package: put the repository root there instead.
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench")]

from fhirstore.paging import search_all  # noqa: E402
from fhirstore.sqlite import SqliteFhirStore  # noqa: E402
from runtime.bus import LocalBus  # noqa: E402
from runtime.cohort import careplan, device  # noqa: E402

START = datetime(2026, 10, 1, tzinfo=UTC)
CRISIS_DAYS = (4, 14, 24)  # 10 days apart: no week holds two (the weekly-mean rule stays quiet)
WEIGHT_STEPS = (9, 19)  # odd patients (heart failure) gain 1.5 kg overnight: a >= 2 lb day gain, flagged
KINDS = {
    "Observation": "observations",
    "DetectedIssue": "episodes",
    "Task": "episodes",
    "Flag": "episodes",
    "Communication": "messages",
}
# Identifiers that are not the resource's identity (an acknowledgement code, the provider's id).
SECONDARY_SYSTEMS = {"urn:vigil:ack-code", "urn:vigil:provider-message-id"}
SWEEPS = ("alert_sweep", "reminder_sweep", "retention_purge")


def stream(patients: int, days: int) -> tuple[list[bytes], int]:
    msgs: list[bytes] = []
    alerting = 0
    for day in range(days):
        for p in range(patients):
            t = (START + timedelta(days=day, hours=12, minutes=p % 60)).isoformat()
            crisis = p % 2 == 0 and day in CRISIS_DAYS
            step = p % 2 == 1 and day in WEIGHT_STEPS
            weight = 80 + p / 10 + (1.5 * sum(day >= s for s in WEIGHT_STEPS) if p % 2 else 0)
            alerting += crisis + step
            base = {"deviceId": f"chaos-{p}", "time": t}
            msgs.append(json.dumps({**base, "type": "blood_pressure",
                                    "values": {"systolic": 188 if crisis else 112, "diastolic": 72}}).encode())
            msgs.append(json.dumps({**base, "type": "heart_rate", "values": {"bpm": 70 + p % 20}}).encode())
            msgs.append(json.dumps({**base, "type": "spo2", "values": {"percent": 97}}).encode())
            msgs.append(json.dumps({**base, "type": "body_weight", "values": {"weight": round(weight, 1)}}).encode())
    return msgs, alerting


def seed(data_dir: Path, patients: int) -> None:
    data_dir.mkdir(parents=True, mode=0o700)
    store = SqliteFhirStore(data_dir / "fhir.db")
    for p in range(patients):
        store.update({"resourceType": "Patient", "id": f"c{p}", "active": True,
                      "telecom": [{"system": "sms", "value": f"+1555020{p:04d}"}]})
        store.update(careplan(f"c{p}", "hypertension"))
        if p % 2:
            store.update(careplan(f"c{p}", "heart-failure"))
        store.update(device(f"chaos-{p}", f"c{p}"))
    store.close()


def host_env(data_dir: Path, as_of: str) -> dict[str, str]:
    env = {**os.environ, "VIGIL_DATA_DIR": str(data_dir), "VIGIL_HTTP_PORT": "0", "VIGIL_AS_OF": as_of,
           # The same key in both runs: acknowledgement links (in message bodies) then match.
           "VIGIL_ACK_TOKEN_KEYS": "chaos:" + "k" * 48, "VIGIL_LOCAL_TOKEN": "chaos-local-token",
           "PYTHONPATH": str(ROOT)}
    env.setdefault("VIGIL_CONTACT_PHONE", "+1-555-010-0100")  # the fictional clinic's (required to send)
    env.update({f"AzureWebJobs.{name}.Disabled": "true" for name in SWEEPS})
    return env


class Host:
    """One `vigil serve` process; `ready` is set when it prints its banner."""

    def __init__(self, env: dict[str, str]) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "serve"], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.ready = threading.Event()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            self.output.append(line)
            if line.startswith("Vigil local host on"):
                self.ready.set()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()


class Publisher(threading.Thread):
    """Publishes the stream onto the bus at a steady pace, whatever happens to the host (the bus
    file is the durable hand-over, as an Event Hub would be)."""

    def __init__(self, bus_path: Path, messages: list[bytes], duration_s: float, chunk: int = 20) -> None:
        super().__init__(daemon=True)
        self.bus_path, self.messages, self.chunk = bus_path, messages, chunk
        self.pause = duration_s / max(1, len(messages) / chunk)
        self.published = 0

    def run(self) -> None:
        bus = LocalBus(self.bus_path)
        for i in range(0, len(self.messages), self.chunk):
            part = self.messages[i:i + self.chunk]
            bus.publish_many("eh:device-messages",
                             ((m, f"chaos-{i + j}", None, None) for j, m in enumerate(part)))
            self.published += len(part)
            time.sleep(self.pause)
        bus.close()


def in_flight(bus: LocalBus) -> int:
    return sum(n for topic, n in bus.topics().items() if topic.startswith(("eh:", "eg:")))


def observations(store: SqliteFhirStore) -> int:
    return store.search("Observation", {"_summary": "count"}).total or 0


def run(data_dir: Path, messages: list[bytes], *, patients: int, as_of: str, kills: int, duration_s: float,
        rng: random.Random, log: Any) -> dict[str, Any]:
    seed(data_dir, patients)
    env = host_env(data_dir, as_of)
    bus = LocalBus(data_dir / "bus.db")
    store = SqliteFhirStore(data_dir / "fhir.db")
    publisher = Publisher(data_dir / "bus.db", messages, duration_s)
    kill_log: list[dict[str, Any]] = []
    started = time.monotonic()
    host = Host(env)
    publisher.start()
    while len(kill_log) < kills:
        if rng.random() < 0.15:
            time.sleep(rng.uniform(0.0, 0.8))  # while it is still starting (imports, bootstrap, lease release)
            phase = "ready" if host.ready.is_set() else "starting"
        else:
            host.ready.wait(timeout=30)
            time.sleep(rng.uniform(0.05, 1.5))
            phase = "working"
        if host.proc.poll() is not None:
            raise SystemExit("the host exited by itself:\n" + "".join(host.output[-30:]))
        pending = in_flight(bus) + (len(messages) - publisher.published)
        host.kill()
        kill_log.append({"after_s": round(time.monotonic() - host.started, 2), "phase": phase,
                         "observations": observations(store), "work_pending": pending})
        print(f"  kill {len(kill_log):>2}: {phase:<8} {kill_log[-1]['after_s']:>5.2f}s after start, "
              f"{kill_log[-1]['observations']} observations stored, {pending} messages pending", file=log)
        host = Host(env)
    # Drain: the stream is all published, nothing is left on the bus or in the store's event outbox,
    # and the counts stay put for a few seconds (the last messages are being sent).
    publisher.join()
    deadline = time.monotonic() + 600
    stable_since, last = time.monotonic(), None
    while time.monotonic() < deadline:
        if host.proc.poll() is not None:
            raise SystemExit("the host exited by itself:\n" + "".join(host.output[-30:]))
        now_state = (observations(store), in_flight(bus), store.outbox_size(),
                     store.search("Communication", {"_summary": "count"}).total)
        if now_state != last:
            stable_since, last = time.monotonic(), now_state
        elif now_state[1] == 0 and now_state[2] == 0 and time.monotonic() - stable_since > 3:
            break
        time.sleep(0.2)
    else:
        raise SystemExit(f"{data_dir}: not drained after 600 s: {last}")
    host.stop()
    elapsed = time.monotonic() - started
    result = collect(data_dir, store)
    store.close()
    bus.close()
    result.update(kills=kill_log, elapsed_s=round(elapsed, 1))
    return result


def collect(data_dir: Path, store: SqliteFhirStore) -> dict[str, Any]:
    ids: dict[str, Counter[str]] = {}
    statuses: Counter[str] = Counter()
    rewritten = 0
    for rtype in KINDS:
        counter: Counter[str] = Counter()
        for resource in search_all(store, rtype, {"_count": "1000"}):
            if rtype == "Communication":
                statuses[resource.get("status", "?")] += 1
            keys = [f"{i.get('system')}|{i.get('value')}" for i in resource.get("identifier", [])
                    if i.get("system") not in SECONDARY_SYSTEMS]
            counter.update(keys or [f"id-only:{resource['id']}"])
            if rtype == "Observation" and resource["meta"]["versionId"] != "1":
                rewritten += 1
        ids[rtype] = counter
    ids["outbox"] = Counter(json.loads(p.read_text())["message_id"] for p in (data_dir / "outbox").glob("*.json"))
    from ingest.deadletter import SqliteDeadLetterStore

    dead = SqliteDeadLetterStore(data_dir / "deadletters.db")
    result = {"ids": ids, "rewritten_observations": rewritten, "dead_letters": dead.count(),
              "communication_status": dict(statuses)}
    dead.close()
    return result


def compare(clean: dict[str, Any], chaos: dict[str, Any]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for kind in (*KINDS, "outbox"):
        a, b = clean["ids"][kind], chaos["ids"][kind]
        out[kind] = {
            "clean": sum(a.values()),
            "chaos": sum(b.values()),
            "lost": len(set(a) - set(b)),
            "duplicated": sum(n - 1 for n in b.values() if n > 1) + (
                chaos["rewritten_observations"] if kind == "Observation" else 0),
            "extra": len(set(b) - set(a)),
        }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--patients", type=int, default=40)
    p.add_argument("--days", type=int, default=25)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--cycle-s", type=float, default=2.0, help="stream duration per planned kill (seconds)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the two data directories")
    args = p.parse_args()
    log = sys.stderr if args.json else sys.stdout
    messages, alerting = stream(args.patients, args.days)
    as_of = (START + timedelta(days=args.days, hours=18)).isoformat()
    duration = max(10.0, args.kills * args.cycle_s)
    work = Path(tempfile.mkdtemp(prefix="vigil-chaos-"))
    print(f"chaos: {len(messages)} messages ({alerting} alerting) streamed over ~{duration:.0f} s, "
          f"clock fixed at {as_of}; data in {work}", file=log)
    print("clean run (no kill)...", file=log)
    clean = run(work / "clean", messages, patients=args.patients, as_of=as_of, kills=0, duration_s=duration,
                rng=random.Random(args.seed), log=log)
    print(f"chaos run ({args.kills} SIGKILLs)...", file=log)
    chaos = run(work / "chaos", messages, patients=args.patients, as_of=as_of, kills=args.kills,
                duration_s=duration, rng=random.Random(args.seed), log=log)
    table = compare(clean, chaos)
    kills = chaos["kills"]
    summary = {
        "messages": len(messages),
        "alerting_messages": alerting,
        "kills": len(kills),
        "kills_with_work_pending": sum(1 for k in kills if k["work_pending"] > 0),
        "kills_by_phase": dict(Counter(k["phase"] for k in kills)),
        "compared": table,
        "lost": sum(r["lost"] for r in table.values()),
        "duplicated": sum(r["duplicated"] + r["extra"] for r in table.values()),
        "dead_letters": {"clean": clean["dead_letters"], "chaos": chaos["dead_letters"]},
        "communication_status": {"clean": clean["communication_status"], "chaos": chaos["communication_status"]},
        "elapsed_s": {"clean": clean["elapsed_s"], "chaos": chaos["elapsed_s"]},
        "kill_log": kills,
    }
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"\nkills: {summary['kills']} ({summary['kills_with_work_pending']} with messages still to process; "
              f"by phase {summary['kills_by_phase']})")
        print(f"{'':<14}{'clean':>8}{'chaos':>8}{'lost':>6}{'dup':>6}{'extra':>7}")
        for kind, row in table.items():
            print(f"{kind:<14}{row['clean']:>8}{row['chaos']:>8}{row['lost']:>6}{row['duplicated']:>6}{row['extra']:>7}")
        print(f"dead letters: clean {clean['dead_letters']}, chaos {chaos['dead_letters']}")
        print(f"Communication status: clean {clean['communication_status']}, "
              f"chaos {chaos['communication_status']}")
        print(f"LOST {summary['lost']}  DUPLICATED {summary['duplicated']}")
    return 0 if summary["lost"] == 0 and summary["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
