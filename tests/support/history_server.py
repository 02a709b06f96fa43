"""The facade `vigil serve` serves, plus FHIR R4 type-level history (`GET [base]/{Type}/_history`,
https://hl7.org/fhir/R4/http.html#history) over the same embedded store, for the export's `_history`
path. The facade itself serves instance history only (its CapabilityStatement says `history-instance`);
servers such as HAPI and Health Data Services also serve type history, which this stands in for.

History is read from the store's file (every version, deletes included, with its commit instant) and
served newest first in pages of `_count` with `next` links; `_since` keeps versions at or after the instant.
`/metadata` adds `history-type` to every type's interactions.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from fhirstore import rest
from fhirstore.port import FhirStore
from runtime.http_app import ALL_METHODS, HttpApp, Limits, Request, Response, RouteRegistry
from runtime.http_server import HttpServer, fhir_error

PREFIX = "/fhir"


def _micros(instant: str) -> int:
    return int(datetime.fromisoformat(instant.replace("Z", "+00:00")).timestamp() * 1_000_000)


def _history(db_path: Path, base: str, rtype: str, query: str) -> dict:
    params = dict(parse_qsl(query))
    count, offset = int(params.get("_count", "100")), int(params.get("_offset", "0"))
    since = _micros(params["_since"]) if "_since" in params else None
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT r.id, v.vkey & 1048575, v.method, v.at, v.body FROM versions v "
                          "JOIN resources r ON r.rid = (v.vkey >> 20) WHERE r.type = ?", (rtype,)).fetchall()
    finally:
        db.close()
    rows = [r for r in rows if since is None or _micros(r[3]) >= since]
    rows.sort(key=lambda r: (_micros(r[3]), r[1]), reverse=True)
    page = rows[offset:offset + count]
    entries = []
    for id_, version, method, at, body in page:
        entry: dict = {"fullUrl": f"{base}/{rtype}/{id_}",
                       "request": {"method": method, "url": rtype if method == "POST" else f"{rtype}/{id_}"},
                       "response": {"status": "204" if method == "DELETE" else "200", "etag": f'W/"{version}"',
                                    "lastModified": at}}
        if body is not None:
            entry["resource"] = json.loads(body)
        entries.append(entry)
    links = []
    if offset + count < len(rows):
        nxt = {**params, "_offset": str(offset + count)}
        links.append({"relation": "next", "url": f"{base}/{rtype}/_history?{urlencode(nxt)}"})
    return {"resourceType": "Bundle", "type": "history", "total": len(rows), "link": links, "entry": entries}


@contextmanager
def serve_with_type_history(store: FhirStore, db_path: Path) -> Iterator[str]:
    registry = RouteRegistry()

    def fhir(request: Request) -> Response:
        path = request.route_params.get("rest", "").strip("/")
        base = request.base_url + PREFIX
        segments = path.split("/")
        if request.method == "GET" and len(segments) == 2 and segments[1] == "_history":
            body = json.dumps(_history(db_path, base, segments[0], request.query)).encode()
            return Response(200, {"Content-Type": rest.FHIR_JSON}, body)
        resp = rest.handle(store, request.method, path, request.query, request.headers, request.body, base)
        if request.method == "GET" and path == "metadata" and resp.status == 200:
            statement = json.loads(resp.body)
            for entry in statement["rest"][0]["resource"]:
                entry["interaction"].append({"code": "history-type"})
            return Response(200, dict(resp.headers), json.dumps(statement).encode())
        return Response(resp.status, dict(resp.headers), resp.body)

    registry.add(PREFIX, fhir, methods=ALL_METHODS, auth="anonymous", prefix=True, name="fhir",  # type: ignore[arg-type]
                 errors=fhir_error)
    server = HttpServer(HttpApp("", registry, Limits(max_body_bytes=1 << 20)), ("127.0.0.1", 0))
    server.start()
    try:
        yield server.url + PREFIX
    finally:
        server.shutdown()
