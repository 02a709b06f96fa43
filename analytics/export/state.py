"""The export's persisted state: the committed watermark and the run in progress, if any.

Written atomically (temporary file, fsync, rename), so a crash leaves either the old state or the new.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class PendingRun:
    run_id: str
    after: int  # window start, exclusive (microseconds since the epoch)
    upto: int  # window end, inclusive
    # The run folders (relative to the destination) its files go to, recorded before they are uploaded,
    # so that a run redone after a failure removes exactly what it may have left.
    dirs: list[str] = field(default_factory=list)


@dataclass
class ExportState:
    watermark: int = 0  # every change with updated <= watermark is committed to the lake
    runs: int = 0
    pending: PendingRun | None = None
    deidentify: str | None = None  # the de-identification the lake was started with (None: identified data)
    last_summary: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> ExportState:
        return cls.from_bytes(path.read_bytes() if path.exists() else None, str(path))

    @classmethod
    def from_bytes(cls, data: bytes | None, where: str) -> ExportState:
        if data is None:
            return cls()
        path = where
        try:
            raw = json.loads(data.decode("utf-8"))
            pending = raw.get("pending")
            return cls(watermark=int(raw["watermark"]), runs=int(raw.get("runs", 0)),
                       pending=PendingRun(**pending) if pending else None, deidentify=raw.get("deidentify"),
                       last_summary=raw.get("last_summary") or {})
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"the export state {path} is unreadable ({exc}); "
                             "fix or remove it (removing it re-exports everything)") from exc

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode("utf-8")

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(asdict(self), fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
