"""Retention: remove health data Vigil no longer needs, store by store (docs/operations.md).

Applied by `vigil purge [--dry-run]` and by the daily `retention_purge` timer. Ages are wall-clock
ages of what was stored (a dead letter's `created_at`, a bus message's `enqueued_at`, an outbox
file's modification time), not the clinical clock, so a simulation's fixed clock cannot purge
fresh data. What is still pending is never removed:
- the bus: only the workflow-events topic (kept for `vigil events tail`; nobody consumes it) is
  purged; a message of any other topic is undelivered work and stays whatever its age;
- dead letters: a replayed one is deleted; one never replayed keeps its record and loses its payload;
- the outbox: a message file exists only once it was sent (the file *is* the send), so every file
  older than the retention goes, and so do temporary files a killed process left half-written.
The send ledger (`sends.db`) holds message ids and provider ids, no health data, and is the record
that stops a message being sent twice: it is not purged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runtime.bootstrap import WORKFLOW_EVENTS, Services

log = logging.getLogger(__name__)
ABANDONED_TMP_S = 3600.0  # an outbox temp file this old belongs to no live send


@dataclass
class RetentionReport:
    dry_run: bool
    dead_letters: dict[str, Any] = field(default_factory=dict)
    outbox: dict[str, Any] = field(default_factory=dict)
    bus: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def outbox_directories(services: Services) -> list[Path]:
    """The directories of the configured file-outbox channels (several channels may share one)."""
    from notifications.channels.outbox import file_outbox

    seen: dict[str, Path] = {}
    for channel in services.channels.values():
        outbox = file_outbox(channel)
        if outbox is not None:
            seen.setdefault(str(outbox.directory.resolve()), outbox.directory)
    return list(seen.values())


def apply_retention(services: Services, *, dry_run: bool = False, now: float | None = None) -> RetentionReport:
    now = time.time() if now is None else now
    settings = services.settings
    report = RetentionReport(dry_run=dry_run)

    keep = settings.retention_s("dead_letter")
    if keep is None:
        report.dead_letters = {"kept_forever": True}
    else:
        report.dead_letters = {"retention_days": keep / 86400,
                               **services.dead_letters.purge(older_than_s=keep, now=now, dry_run=dry_run)}

    keep = settings.retention_s("outbox")
    if keep is None:
        report.outbox = {"kept_forever": True}
    else:
        report.outbox = {"retention_days": keep / 86400, **_purge_outbox(services, keep, now, dry_run)}

    keep = settings.retention_s("bus")
    if services.bus is None:
        report.bus = {"not_used": True}
    elif keep is None:
        report.bus = {"kept_forever": True}
    else:
        report.bus = {"retention_days": keep / 86400,
                      **services.bus.purge(WORKFLOW_EVENTS, older_than_s=keep, dry_run=dry_run)}
    # Counts only: what was purged is never named in a log line.
    log.info("retention%s: dead letters %s, outbox %s, bus %s", " (dry run)" if dry_run else "",
             report.dead_letters, report.outbox, report.bus)
    return report


def _purge_outbox(services: Services, keep_s: float, now: float, dry_run: bool) -> dict[str, int]:
    files = tmp = kept = 0
    for directory in outbox_directories(services):
        if not directory.is_dir():
            continue
        for path in directory.iterdir():
            try:
                age = now - path.stat().st_mtime
            except FileNotFoundError:
                continue  # sent and purged by someone else meanwhile
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                if age > ABANDONED_TMP_S:
                    tmp += 1
                    if not dry_run:
                        path.unlink(missing_ok=True)
            elif path.suffix == ".json":
                if age > keep_s:
                    files += 1
                    if not dry_run:
                        path.unlink(missing_ok=True)
                else:
                    kept += 1
    return {"deleted": files, "abandoned_tmp_deleted": tmp, "kept": kept}
