"""FHIR Bulk Data `$export` (https://hl7.org/fhir/uv/bulkdata/export.html) on the local FHIR facade.

Kick-off (system `/fhir/$export`, `/fhir/Patient/$export`, `/fhir/Group/{id}/$export`) with
`Prefer: respond-async` answers 202 and a `Content-Location` status URL; polling it answers 202 with
`X-Progress` while the job runs, then 200 with the manifest; the manifest's URLs serve one NDJSON file per
resource type; `DELETE` on the status URL cancels the job and removes its files.

The resources come from the embedded SQLite store through the analytics export's reader
(analytics/export/source.py), which sees every current version with its commit instant, so `_since` is a
plain range over commit instants. fhirstore imports nothing of ours (DESIGN §3), hence these routes live in
runtime and are registered ahead of the /fhir facade.

A job is a folder under the data directory (0700, files 0600): `request.json` (written at kick-off, with the
snapshot instant), the NDJSON files, then `manifest.json`, written last, which marks the job complete. A
restart keeps finished jobs; a job the restart interrupted is redone from its `request.json` on the next
poll (same snapshot instant, so the same resources unless some changed again since).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from analytics.export.source import SqliteSource
from common import jsonnum
from common.storage import PRIVATE_FILE, private_dir, replace_private
from runtime.http_app import ErrorBody, Request, Response, RouteRegistry

log = logging.getLogger(__name__)

NDJSON = "application/fhir+ndjson"
OUTPUT_FORMATS = frozenset({NDJSON, "application/ndjson", "ndjson"})
# Parameters this server honours; any other (e.g. _typeFilter, _elements) is refused rather than ignored,
# so a client never receives more than it asked for without knowing (the spec lets a server refuse).
KNOWN_PARAMS = frozenset({"_since", "_type", "_outputFormat"})
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_FILE = re.compile(r"^(deleted-)?[A-Z][A-Za-z]{0,63}\.ndjson$")
_TYPE = re.compile(r"^[A-Z][A-Za-z]{0,63}$")


class _Bad(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _micros(instant: str) -> int:
    try:
        parsed = datetime.fromisoformat(instant.replace("Z", "+00:00"))
    except ValueError:
        raise _Bad(400, "_since must be a FHIR instant such as 2026-11-20T07:30:00Z") from None
    if parsed.tzinfo is None:
        raise _Bad(400, "_since must carry a time zone (FHIR instant)")
    return int(parsed.timestamp() * 1_000_000)


def _iso(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1e6, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class BulkExports:
    """Jobs under `root`, exported from the embedded store at `store_path`."""

    def __init__(self, root: Path, store_path: Path) -> None:
        self.root = root
        self.store_path = store_path
        self._running: dict[str, threading.Thread] = {}
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._base = "/fhir"
        self._errors: ErrorBody = lambda status, message: Response(status, {}, message.encode())

    # -- routes ---------------------------------------------------------------------------------
    def register(self, registry: RouteRegistry, errors: ErrorBody, base: str = "/fhir") -> None:
        """Add the routes to `registry`; `errors` words refusals (the facade's OperationOutcome)."""
        self._errors, self._base = errors, base
        registry.add(f"{base}/$export", self.kick_off, methods=("GET", "POST"), name="bulk-export",
                     errors=errors)
        registry.add(f"{base}/Patient/$export", self.kick_off, methods=("GET", "POST"),
                     name="bulk-export-patient", errors=errors)
        registry.add(f"{base}/Group/{{group}}/$export", self.kick_off, methods=("GET", "POST"),
                     name="bulk-export-group", errors=errors)
        registry.add(f"{base}/$export-status/{{job}}", self.status, methods=("GET", "DELETE"),
                     name="bulk-export-status", errors=errors)
        registry.add(f"{base}/$export-file/{{job}}/{{file}}", self.download, methods=("GET",),
                     name="bulk-export-file", errors=errors)

    def kick_off(self, request: Request) -> Response:
        try:
            job = self._parse(request)
        except _Bad as exc:
            return self._errors(exc.status, str(exc))
        job_id = secrets.token_hex(16)
        folder = private_dir(self.root) / job_id
        private_dir(folder)
        replace_private(folder / "request.json", json.dumps(job).encode())
        self._start(job_id)
        status_url = f"{request.base_url}{self._base}/$export-status/{job_id}"
        return Response(202, {"Content-Location": status_url})

    def status(self, request: Request) -> Response:
        job_id = request.route_params["job"]
        folder = self._folder(job_id)
        if folder is None:
            return self._errors(404, "no such export job (finished jobs are kept until deleted)")
        if request.method == "DELETE":
            with self._lock:
                self._cancelled.add(job_id)
                thread = self._running.get(job_id)
            if thread is not None:
                thread.join(timeout=30)
            shutil.rmtree(folder, ignore_errors=True)
            return Response(202)
        manifest = folder / "manifest.json"
        if manifest.exists():
            data = json.loads(manifest.read_text())
            for item in (*data["output"], *data.get("deleted", [])):
                item["url"] = f"{request.base_url}{self._base}/$export-file/{job_id}/{item['url']}"
            body = json.dumps(data).encode()
            return Response(200, {"Content-Type": "application/json", "Expires": _expires()}, body)
        error = folder / "error.json"
        if error.exists():
            return Response(500, {"Content-Type": "application/fhir+json"}, error.read_bytes())
        with self._lock:
            running = job_id in self._running
        if not running:  # interrupted by a restart: redo it from its request
            self._start(job_id)
        done = len(list(folder.glob("*.ndjson")))
        return Response(202, {"X-Progress": f"in progress: {done} file(s) written", "Retry-After": "1"})

    def download(self, request: Request) -> Response:
        folder = self._folder(request.route_params["job"])
        name = request.route_params["file"]
        if folder is None or not _FILE.match(name) or not (folder / "manifest.json").exists():
            return self._errors(404, "no such export file")
        path = folder / name
        if not path.is_file():
            return self._errors(404, "no such export file")
        return Response(200, {"Content-Type": NDJSON}, path.read_bytes())

    # -- jobs -----------------------------------------------------------------------------------
    def _folder(self, job_id: str) -> Path | None:
        if not _JOB_ID.match(job_id):
            return None
        folder = self.root / job_id
        return folder if (folder / "request.json").exists() else None

    def _parse(self, request: Request) -> dict[str, Any]:
        if "respond-async" not in request.headers.get("prefer", "").lower():
            raise _Bad(400, "bulk export needs the header 'Prefer: respond-async'")
        accept = request.headers.get("accept", "application/fhir+json")
        if "json" not in accept and "*/*" not in accept:
            raise _Bad(400, "bulk export answers application/fhir+json (Accept)")
        params = _params(request)
        unknown = sorted(set(params) - KNOWN_PARAMS)
        if unknown:
            raise _Bad(400, f"unsupported bulk export parameter(s): {', '.join(unknown)}")
        fmt = params.get("_outputFormat", NDJSON)
        if fmt not in OUTPUT_FORMATS:
            raise _Bad(400, f"_outputFormat {fmt!r} is not supported; use {NDJSON}")
        types = [t.strip() for t in params.get("_type", "").split(",") if t.strip()]
        for t in types:
            if not _TYPE.match(t):
                raise _Bad(400, f"_type {t!r} is not a resource type")
        since = _micros(params["_since"]) if params.get("_since") else 0
        if not self.store_path.exists():
            raise _Bad(501, "bulk export reads the embedded FHIR store, which this deployment does not use")
        source = SqliteSource(self.store_path)
        try:
            upto = source.newest()
        finally:
            source.close()
        level = "system"
        patients: list[str] | None = None
        if request.route_params.get("group"):
            level = "group"
            patients = self._group_members(request.route_params["group"], upto)
        elif request.path.rstrip("/").endswith("/Patient/$export"):
            level = "patient"
        return {"request": _request_url(request), "level": level, "types": types, "since": since, "upto": upto,
                "patients": patients}

    def _group_members(self, group_id: str, upto: int) -> list[str]:
        source = SqliteSource(self.store_path)
        try:
            for change in source.changes("Group", 0, upto):
                if change.id == group_id and not change.deleted and change.body:
                    group = jsonnum.loads(change.body)
                    refs = (m.get("entity", {}).get("reference", "") for m in group.get("member", []))
                    return [r.removeprefix("Patient/") for r in refs if r.startswith("Patient/")]
        finally:
            source.close()
        raise _Bad(404, "no such Group")

    def _start(self, job_id: str) -> None:
        with self._lock:
            if job_id in self._running:
                return
            thread = threading.Thread(target=self._run, args=(job_id,), name="vigil-bulk-export", daemon=True)
            self._running[job_id] = thread
        thread.start()

    def _run(self, job_id: str) -> None:
        folder = self.root / job_id
        try:
            job = json.loads((folder / "request.json").read_text())
            for partial in (*folder.glob("*.ndjson"), *folder.glob(".*.part")):
                partial.unlink()  # a redone job starts clean, so no line is written twice
            output = self._export(job_id, folder, job)
            if job_id in self._cancelled:
                return
            deleted = [o for o in output if o["url"].startswith("deleted-")]
            manifest = {"transactionTime": _iso(job["upto"]), "request": job["request"],
                        "requiresAccessToken": True, "output": [o for o in output if o not in deleted],
                        "deleted": deleted, "error": []}
            replace_private(folder / "manifest.json", json.dumps(manifest).encode())
        except Exception as exc:  # the job fails, the server does not; the type only (no PHI)
            log.warning("bulk export job failed: %s", type(exc).__name__)
            if folder.exists() and job_id not in self._cancelled:
                outcome = {"resourceType": "OperationOutcome",
                           "issue": [{"severity": "error", "code": "exception",
                                      "diagnostics": f"export failed: {type(exc).__name__}"}]}
                replace_private(folder / "error.json", json.dumps(outcome).encode())
        finally:
            with self._lock:
                self._running.pop(job_id, None)

    def _export(self, job_id: str, folder: Path, job: dict[str, Any]) -> list[dict[str, Any]]:
        source = SqliteSource(self.store_path)
        try:
            types = job["types"] or sorted(source.counts(job["since"], job["upto"]))
            patients = None if job["level"] == "system" else _patient_filter(source, job)
            output = []
            for resource_type in types:
                count = _write_type(source, job, resource_type, patients, folder,
                                    cancelled=lambda: job_id in self._cancelled)
                if count is None:
                    return []
                if count:
                    output.append({"type": resource_type, "url": f"{resource_type}.ndjson", "count": count})
                # Bulk Data 2.0 `deleted`: with `_since`, at system level (a deleted resource's compartment
                # is no longer known), the deletes since then, one Bundle of DELETE entries per line.
                if job["since"] and job["level"] == "system":
                    gone = _write_deleted(source, job, resource_type, folder)
                    if gone:
                        output.append({"type": "Bundle", "url": f"deleted-{resource_type}.ndjson", "count": gone})
            return output
        finally:
            source.close()


def _write_type(source: SqliteSource, job: dict[str, Any], resource_type: str, patients: set[str] | None,
                folder: Path, *, cancelled: Callable[[], bool]) -> int | None:
    """Stream one type's resources into `{Type}.ndjson` (0600, renamed into place when whole); how many
    were written, or None when the job was cancelled meanwhile."""
    part = folder / f".{resource_type}.ndjson.part"
    part.unlink(missing_ok=True)
    count = 0
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    os.fchmod(fd, PRIVATE_FILE)  # the umask only filters what open asks for (common/storage.py)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        for change in source.changes(resource_type, job["since"], job["upto"]):
            if cancelled():
                return None
            if change.deleted or change.body is None:
                continue
            if patients is not None and not _in_compartment(resource_type, change.id, change.body, patients):
                continue
            out.write(change.body)
            out.write("\n")
            count += 1
    if count:
        os.replace(part, folder / f"{resource_type}.ndjson")
    else:
        part.unlink()
    return count


def _write_deleted(source: SqliteSource, job: dict[str, Any], resource_type: str, folder: Path) -> int:
    """`deleted-{Type}.ndjson`: a transaction Bundle per deleted resource with its DELETE request
    (https://hl7.org/fhir/uv/bulkdata/export.html, "deleted"), plus the delete's version and instant in
    `response`, so a client can order the delete after the versions it already holds."""
    lines = []
    for change in source.changes(resource_type, job["since"], job["upto"]):
        if change.deleted:
            entry = {"request": {"method": "DELETE", "url": f"{resource_type}/{change.id}"},
                     "response": {"status": "204", "etag": f'W/"{change.version}"',
                                  "lastModified": change.last_updated}}
            lines.append(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [entry]}))
    if lines:
        replace_private(folder / f"deleted-{resource_type}.ndjson", ("\n".join(lines) + "\n").encode())
    return len(lines)


def _patient_filter(source: SqliteSource, job: dict[str, Any]) -> set[str]:
    if job["patients"] is not None:
        return set(job["patients"])
    return {c.id for c in source.changes("Patient", 0, job["upto"]) if not c.deleted}


def _in_compartment(resource_type: str, id: str, body: str, patients: set[str]) -> bool:
    """Whether a resource belongs to one of `patients`' compartments: the patient itself, or a resource
    whose subject or patient reference names one (the reference fields Vigil's resources use; the full
    compartment definition lists more, https://hl7.org/fhir/R4/compartmentdefinition-patient.html)."""
    if resource_type == "Patient":
        return id in patients
    resource = jsonnum.loads(body)
    for key in ("subject", "patient"):
        ref = resource.get(key)
        reference = ref.get("reference") if isinstance(ref, dict) else None
        if isinstance(reference, str) and reference.startswith("Patient/") \
                and reference.removeprefix("Patient/") in patients:
            return True
    return False


def _params(request: Request) -> dict[str, str]:
    params = dict(request.params)
    params.pop("code", None)  # the key, as the app's auth takes it (runtime/http_app.py), not an export parameter
    if request.method == "POST" and request.body:
        try:
            body = json.loads(request.body)
        except ValueError:
            raise _Bad(400, "the POST body must be a FHIR Parameters resource") from None
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise _Bad(400, "the POST body must be a FHIR Parameters resource")
        for p in _iter(body.get("parameter")):
            value = next((v for k, v in p.items() if k.startswith("value")), None)
            if isinstance(p.get("name"), str) and isinstance(value, str):
                params[p["name"]] = f"{params[p['name']]},{value}" if p["name"] == "_type" and p["name"] in params \
                    else value
    return params


def _request_url(request: Request) -> str:
    """The kick-off URL for the manifest, without a `code` key parameter (the token never goes to disk)."""
    kept = [(k, v) for k, v in parse_qsl(request.query, keep_blank_values=True) if k != "code"]
    return request.base_url + request.path + (f"?{urlencode(kept)}" if kept else "")


def _iter(value: Any) -> Iterable[dict[str, Any]]:
    return [p for p in value if isinstance(p, dict)] if isinstance(value, list) else []


def _expires() -> str:
    # Files stay until the job is deleted; Expires only tells caches not to keep the manifest.
    return "0"
