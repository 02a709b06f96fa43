"""`vigil export`: changes since the watermark to NDJSON and Parquet, committed as a whole or not at all.

The window model is FHIR-Analytics-Pipelines' (docs/analytics.md): a run exports the changes with
``watermark < updated <= upto``, where ``upto`` is now minus a grace period (a write that began before
``upto`` has committed by then). The run is recorded as pending before anything is written; its files go to
a staging folder and move into ``result/`` (and ``deleted/`` for tombstones) only when all are written; then
the watermark advances. A run killed at any point is redone on the next start with the same window and run
id, after removing whatever it left, so the lake holds each change exactly once: no gap, no duplicate.

Layout (FHIR-Analytics-Pipelines' ``result/{Type}/{yyyy}/{MM}/{dd}/{jobId}/``)::

    DEST/result/Observation/2026/11/20/r000003/Observation-0000.ndjson
    DEST/result/Observation/2026/11/20/r000003/Observation-0000.parquet
    DEST/deleted/Observation/2026/11/21/r000004/Observation-0000.ndjson   (tombstones)
    DEST/_vigil/state.json, DEST/_vigil/schema/Observation.arrow-schema

The date folders are each version's ``meta.lastUpdated`` day (UTC), or the window's end day when the export
is de-identified (the real day of a change is a date the profile may not allow).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pyarrow.parquet as pq
from tqdm import tqdm

from analytics.export.destination import Destination, DestinationError, LocalDestination
from analytics.export.http import RemoteError
from analytics.export.schema import SchemaConflict, SchemaStore, table_from_ndjson
from analytics.export.source import Change, EmbeddedSource
from analytics.export.state import ExportState, PendingRun
from common import jsonnum
from common.clock import Clock, SystemClock

FORMATS = frozenset({"ndjson", "parquet"})
Transform = Callable[[dict[str, Any]], dict[str, Any]]


STATE = "_vigil/state.json"


class Window(Protocol):
    upto: int
    total: int | None

    def types(self) -> list[str]: ...

    def changes(self, resource_type: str) -> Iterator[Change]: ...


class Source(Protocol):
    """Where changes come from (analytics/export/source.py, remote_source.py, bulk_source.py)."""

    kind: str
    methods: dict[str, str]  # per type: embedded | search | history | bulk

    @property
    def deletes_visible(self) -> dict[str, bool]: ...

    def open(self, after: int, upto: int) -> Window: ...

    def close(self) -> None: ...


class ExportError(RuntimeError):
    """An export that could not finish; nothing of its window was committed and the next run redoes it."""


@dataclass
class ExportSummary:
    run_id: str
    after: int
    upto: int
    resources: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    files: int = 0
    seconds: float = 0.0
    resumed: bool = False
    source: str = "embedded"
    destination: str = ""
    methods: dict[str, str] = field(default_factory=dict)
    # Types whose deletes this source cannot see (a plain paged search): their deletes are not in the lake.
    deletes_not_seen: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.resources.values()) + sum(self.deleted.values())

    @property
    def per_second(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "window": [_iso(self.after), _iso(self.upto)], "resumed": self.resumed,
                "source": self.source, "destination": self.destination, "methods": self.methods,
                "resources": self.resources, "deleted": self.deleted, "deletes_not_seen": self.deletes_not_seen,
                "files": self.files, "seconds": round(self.seconds, 3),
                "resources_per_s": round(self.per_second, 1)}


def _iso(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1e6, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _day(last_updated: str) -> tuple[str, str, str]:
    return last_updated[0:4], last_updated[5:7], last_updated[8:10]


class _Writer:
    """Chunks of one kind (result or deleted) of one resource type into staging files."""

    def __init__(self, staging: Path, kind: str, resource_type: str, run_id: str, formats: frozenset[str],
                 schemas: SchemaStore, chunk_rows: int) -> None:
        self.staging, self.kind, self.type, self.run_id = staging, kind, resource_type, run_id
        self.formats, self.schemas, self.chunk_rows = formats, schemas, chunk_rows
        self.day: tuple[str, str, str] | None = None
        self.lines: list[bytes] = []
        self.seq: dict[tuple[str, str, str], int] = {}
        self.files = 0
        self.dirs: set[Path] = set()
        self.schema_key = resource_type if kind == "result" else f"{resource_type}.deleted"

    def add(self, day: tuple[str, str, str], line: bytes) -> None:
        if self.day is not None and (day != self.day or len(self.lines) >= self.chunk_rows):
            self.flush()
        self.day = day
        self.lines.append(line)

    def flush(self) -> None:
        if not self.lines or self.day is None:
            return
        folder = self.staging / self.kind / self.type / Path(*self.day) / self.run_id
        folder.mkdir(parents=True, exist_ok=True)
        self.dirs.add(folder.relative_to(self.staging))
        n = self.seq.get(self.day, 0)
        self.seq[self.day] = n + 1
        data = b"\n".join(self.lines) + b"\n"
        stem = folder / f"{self.type}-{n:04d}"
        if "ndjson" in self.formats:
            stem.with_suffix(".ndjson").write_bytes(data)
            self.files += 1
        if "parquet" in self.formats:
            try:
                table = table_from_ndjson(data, self.schema_key, self.schemas)
            except SchemaConflict as exc:
                raise ExportError(f"cannot give {self.type} a stable Parquet schema: {exc}") from exc
            pq.write_table(table, stem.with_suffix(".parquet"), compression="zstd")
            self.files += 1
        self.lines = []


def _tombstone(change: Change) -> dict[str, Any]:
    # A server's delete entry may not say which version the delete is: "" then, so every tombstone file
    # has the field the views read (a reader cannot select a column no file has) and it casts to no number.
    meta = {"versionId": str(change.version) if change.version else "", "lastUpdated": change.last_updated}
    return {"resourceType": change.resource_type, "id": change.id, "meta": meta}


def run_export(
    store_path: Path | None,
    dest: Path | Destination,
    *,
    source: Source | None = None,
    formats: frozenset[str] = FORMATS,
    grace_s: float = 2.0,
    upto: int | None = None,
    transform: Transform | None = None,
    deidentify: str | None = None,
    clock: Clock | None = None,
    chunk_rows: int = 100_000,
    progress: bool = False,
) -> ExportSummary:
    """Export what changed since the last committed run (or redo an interrupted run first).

    `source` defaults to the embedded store at `store_path`; `dest` is a local folder or a Destination."""
    if not formats or not formats <= FORMATS:
        raise ExportError(f"formats must be some of {sorted(FORMATS)}, got {sorted(formats)}")
    if (transform is None) != (deidentify is None):
        raise ExportError("a de-identifying export names its configuration (deidentify=...)")
    destination = dest if not isinstance(dest, (str, Path)) else LocalDestination(Path(dest))
    owns_source = source is None
    if source is None:
        if store_path is None:
            raise ExportError("an export needs a source: the embedded store's path or a remote source")
        source = EmbeddedSource(store_path)
    try:
        return _export(source, destination, formats=formats, grace_s=grace_s, upto=upto, transform=transform,
                       deidentify=deidentify, clock=clock, chunk_rows=chunk_rows, progress=progress)
    except DestinationError as exc:
        raise ExportError(f"{exc}; nothing of this window was committed, the next run redoes it") from exc
    except RemoteError as exc:
        raise ExportError(f"reading the FHIR server failed: {exc}; nothing of this window was committed, "
                          "the next run redoes it") from exc
    finally:
        if owns_source:
            source.close()


def _export(source: Source, destination: Destination, *, formats: frozenset[str], grace_s: float, upto: int | None,
            transform: Transform | None, deidentify: str | None, clock: Clock | None, chunk_rows: int,
            progress: bool) -> ExportSummary:
    started = time.monotonic()
    try:
        state = ExportState.from_bytes(destination.read(STATE), f"{destination.label}/{STATE}")
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    if (state.runs or state.pending) and state.deidentify != deidentify:
        had = f"de-identified with {state.deidentify}" if state.deidentify else "identified data"
        now = f"de-identified with {deidentify}" if deidentify else "identified data"
        raise ExportError(f"{destination.label} holds {had}; this run would add {now}: use another destination")
    state.deidentify = deidentify
    resumed = state.pending is not None
    if state.pending is None:
        # The window ends on the clock the store stamps commits with (the system clock in production).
        now_s = (clock or SystemClock()).now().timestamp()
        end = upto if upto is not None else int((now_s - grace_s) * 1_000_000)
        end = max(end, state.watermark)
        state.pending = PendingRun(f"r{state.runs + 1:06d}", state.watermark, end)
        destination.write(STATE, state.to_bytes())
    else:
        destination.clear(state.pending.run_id, state.pending.dirs)
    run = state.pending
    window = source.open(run.after, run.upto)
    if window.upto != run.upto:  # the source ends the window (bulk $export: its transactionTime)
        run.upto = window.upto
        destination.write(STATE, state.to_bytes())
    summary = ExportSummary(run.run_id, run.after, run.upto, resumed=resumed, source=source.kind,
                            destination=destination.label)
    staging = destination.work / "_vigil" / "staging" / run.run_id
    shutil.rmtree(staging, ignore_errors=True)
    schemas = SchemaStore(destination.work / "_vigil" / "schema",
                          fetch=None if isinstance(destination, LocalDestination)
                          else lambda name: destination.read(f"_vigil/schema/{name}"))
    sync_day = _day(_iso(run.upto))
    dirs: set[Path] = set()
    bar = tqdm(total=window.total, unit="res", disable=not progress, desc="export")
    try:
        for rtype in window.types():
            bar.set_description(rtype)
            live = _Writer(staging, "result", rtype, run.run_id, formats, schemas, chunk_rows)
            gone = _Writer(staging, "deleted", rtype, run.run_id, formats, schemas, chunk_rows)
            for change in window.changes(rtype):
                day = sync_day if transform else _day(change.last_updated)
                if change.deleted or change.body is None:
                    doc = _tombstone(change)
                    doc = transform(doc) if transform else doc
                    gone.add(day, json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode())
                    summary.deleted[rtype] = summary.deleted.get(rtype, 0) + 1
                else:
                    if transform:
                        # Decimals as written through the transform (common/jsonnum.py), as the
                        # untransformed body keeps them.
                        line = jsonnum.dumps(transform(jsonnum.loads(change.body)), separators=(",", ":"),
                                             ensure_ascii=False).encode()
                    else:
                        line = change.body.encode()
                    live.add(day, line)
                    summary.resources[rtype] = summary.resources.get(rtype, 0) + 1
                bar.update(1)
            for writer in (live, gone):
                writer.flush()
                summary.files += writer.files
                dirs |= writer.dirs
    except OSError as exc:
        raise ExportError(f"writing the export under {staging} failed ({exc}); nothing of this window "
                          "was committed, the next run redoes it") from exc
    finally:
        bar.close()
    summary.methods = dict(source.methods)
    summary.deletes_not_seen = sorted(t for t, seen in source.deletes_visible.items() if not seen)
    if not isinstance(destination, LocalDestination):
        run.dirs = sorted(d.as_posix() for d in dirs)
        destination.write(STATE, state.to_bytes())
    try:
        destination.publish(staging, dirs)
        if not isinstance(destination, LocalDestination):
            for name in sorted(schemas.changed):
                destination.write(f"_vigil/schema/{name}", (schemas.directory / name).read_bytes())
    except OSError as exc:
        raise ExportError(f"moving the export from {staging} into {destination.label} failed ({exc}); "
                          "the next run redoes this window") from exc
    # The commit point: everything above is durable in the destination; only now does the watermark move.
    state.watermark = run.upto
    state.runs += 1
    state.pending = None
    summary.seconds = time.monotonic() - started
    state.last_summary = summary.as_dict()
    try:
        destination.write(STATE, state.to_bytes())
    except OSError as exc:
        raise ExportError(f"recording the finished run in {destination.label} failed ({exc}); "
                          "the next run redoes this window") from exc
    finish = getattr(window, "finish", None)
    if finish is not None:
        finish()
    return summary
