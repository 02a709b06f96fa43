"""`vigil demo`: a synthetic cohort through the whole local pipeline, and what came out of it."""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any, TextIO

from common.storage import private_dir, replace_private
from fhirstore.paging import search_all
from notifications.channels.outbox import file_outbox
from runtime.bootstrap import Services
from runtime.cohort import build_cohort, care_team, staff
from runtime.host import LocalHost


@dataclass
class Snapshot:
    observations: int = 0
    alerts_by_rule: Counter[str] = field(default_factory=Counter)
    messages_by_channel: Counter[str] = field(default_factory=Counter)
    messages_by_status: Counter[str] = field(default_factory=Counter)
    messages_by_recipient: Counter[str] = field(default_factory=Counter)
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)
    outbox_files: int = 0

    @property
    def alerts(self) -> int:
        return sum(self.alerts_by_rule.values())

    @property
    def messages(self) -> int:
        return sum(self.messages_by_channel.values())

    @property
    def dead_letters(self) -> int:
        return sum(self.dead_letters_by_reason.values())


def snapshot(services: Services) -> Snapshot:
    store = services.store
    snap = Snapshot()
    snap.observations = store.search("Observation", {"_summary": "count"}).total or 0
    for issue in search_all(store, "DetectedIssue", {"_count": "1000"}):
        codes = [c.get("code") for c in issue.get("code", {}).get("coding", [])]
        snap.alerts_by_rule[codes[0] if codes else "?"] += 1
    for comm in search_all(store, "Communication", {"_count": "1000"}):
        medium = [c.get("code") for m in comm.get("medium", []) for c in m.get("coding", [])]
        snap.messages_by_channel[medium[0] if medium else "?"] += 1
        snap.messages_by_status[comm.get("status", "?")] += 1
        recipient = next((r.get("reference", "") for r in comm.get("recipient", [])), "")
        snap.messages_by_recipient["patients" if recipient.startswith("Patient/") else "care team"] += 1
    snap.dead_letters_by_reason = services.dead_letters.counts_by_reason()
    outbox = file_outbox(services.channels.get("outbox"))
    snap.outbox_files = len(outbox.messages()) if outbox is not None else 0
    return snap


def run_demo(
    services: Services,
    *,
    patients: int = 50,
    days: int = 14,
    start: date = date(2026, 11, 1),
    seed: int = 7,
    out: TextIO | None = None,
    progress: TextIO | None = None,
) -> dict[str, Any]:
    # Resolved per call, not at import: a caller (or a test) may have replaced sys.stdout since.
    out = out if out is not None else sys.stdout
    progress = progress if progress is not None else sys.stderr
    host = LocalHost(services)
    host.acquire()
    try:
        return _run(host, services, patients, days, start, seed, out, progress)
    finally:
        host.release()


def _run(host: LocalHost, services: Services, patients: int, days: int, start: date, seed: int,
         out: TextIO, progress: TextIO) -> dict[str, Any]:
    data_dir = services.settings.data_dir
    print(f"Vigil demo: {patients} patients x {days} days from {start}, seed {seed}", file=out)
    cohort = build_cohort(patients=patients, days=days, start=start, seed=seed)
    demo_dir = data_dir / "demo"
    private_dir(demo_dir)
    replace_private(demo_dir / "messages.jsonl", b"\n".join(cohort.messages) + b"\n")
    before = snapshot(services)

    for resource in staff():
        services.store.update(resource)
    for p in cohort.patients:
        services.store.update(p.resource())
        for resource in (*p.careplans(), *p.devices(), care_team(p.id)):
            services.store.update(resource)
    started = time.perf_counter()
    host.publish_device_messages(cohort.messages)
    total = len(cohort.messages)
    queue = host.device_queue

    def show() -> None:
        left = host.bus.pending(queue)
        done = total - left
        width = 30
        filled = int(width * done / total) if total else width
        events = sum(n for q, n in host.bus.topics().items() if q.startswith("eg:")) + host.pending_store_events()
        progress.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} messages, "
                       f"{events} events in flight ")
        progress.flush()

    finished = host.run_until_idle(timeout_s=600, on_progress=show)
    show()
    progress.write("\n")
    elapsed = time.perf_counter() - started
    after = snapshot(services)

    new_obs = after.observations - before.observations
    new_alerts = after.alerts - before.alerts
    new_msgs = after.messages - before.messages
    new_dls = after.dead_letters - before.dead_letters
    lines = [
        "",
        f"Readings sent            {cohort.readings} readings + {cohort.malformed} malformed messages",
        f"Observations in FHIR     {after.observations} (new this run: {new_obs})",
        f"Alerts (DetectedIssue)   {after.alerts} (new this run: {new_alerts})",
    ]
    lines += [f"    {rule:<22} {n}" for rule, n in sorted(after.alerts_by_rule.items())]
    lines.append(f"Messages (Communication) {after.messages} (new this run: {new_msgs})")
    lines += [f"    channel {ch:<14} {n}" for ch, n in sorted(after.messages_by_channel.items())]
    lines += [f"    to      {who:<14} {n}" for who, n in sorted(after.messages_by_recipient.items())]
    lines += [f"    status  {st:<14} {n}" for st, n in sorted(after.messages_by_status.items())]
    lines.append(f"Dead letters             {after.dead_letters} (new this run: {new_dls})")
    lines += [f"    {reason:<22} {n}" for reason, n in sorted(after.dead_letters_by_reason.items())]
    lines += [
        f"Throughput               {total / elapsed:,.0f} messages/s end to end ({elapsed:.1f} s)",
        f"Pipeline drained         {'yes' if finished else 'NO (timed out)'}",
        "",
        "Outputs",
        f"    FHIR store           {services.settings.path('fhir.db')}",
        f"    messages sent        {_outbox_directory(services)}/ ({after.outbox_files} files)",
        f"    dead letters         {services.settings.path('deadletters.db')}  (vigil dead-letters list)",
        f"    demo input           {demo_dir / 'messages.jsonl'}",
        "Run `vigil demo` again: the same input adds nothing new.",
    ]
    print("\n".join(lines), file=out)
    return {
        "observations": after.observations, "new_observations": new_obs,
        "alerts": after.alerts, "new_alerts": new_alerts, "alerts_by_rule": dict(after.alerts_by_rule),
        "messages": after.messages, "new_messages": new_msgs, "outbox_files": after.outbox_files,
        "dead_letters": after.dead_letters, "new_dead_letters": new_dls,
        "dead_letters_by_reason": after.dead_letters_by_reason,
        "messages_per_s": total / elapsed if elapsed else 0.0, "drained": finished,
        "readings": cohort.readings,
    }


def _outbox_directory(services: Services) -> str:
    """Where the outbox channel really writes (what the channels file says, resolved)."""
    outbox = file_outbox(services.channels.get("outbox"))
    return str(outbox.directory) if outbox is not None else str(services.settings.path("outbox"))
