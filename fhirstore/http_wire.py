"""FHIR R4 REST on the wire, for `fhirstore.http_store`: checked paths and query pairs going out;
ids, versions, ETags and next links read from what comes back (FHIR R4 http.html).

Path parts are checked before they go into a URL (a FHIR id is 1-64 of A-Z a-z 0-9 - .), so nothing odd
reaches a request line, and a search's values are sent as query pairs, never formatted into the path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from fhirstore.errors import InvalidResource, InvalidSearch
from fhirstore.port import Resource, SearchParams

_TYPE_RE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")  # FHIR R4 id datatype


def checked_type(resource_type: object) -> str:
    if not isinstance(resource_type, str) or not _TYPE_RE.match(resource_type):
        raise InvalidResource(f"resourceType must be a FHIR resource type name, got {resource_type!r}")
    return resource_type


def checked_id(value: object, what: str = "id") -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise InvalidResource(f"{what} must be 1-64 characters of A-Z a-z 0-9 - . (got {value!r})")
    return value


def with_etag(entry: Any) -> Any:
    """A history entry with `response.etag`, as the port promises: servers that send only the
    resource (Medplum's FHIR router) still name the version in its `meta.versionId`."""
    if not isinstance(entry, dict) or (entry.get("response") or {}).get("etag"):
        return entry
    version = meta_version(entry.get("resource") or {})
    if version is None:
        return entry
    return {**entry, "response": {**(entry.get("response") or {}), "etag": f'W/"{version}"'}}


def resource_path(resource_type: str, id: object) -> str:
    return f"{checked_type(resource_type)}/{checked_id(id, f'{resource_type} id')}"


def query_pairs(resource_type: str, params: SearchParams | None) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for name, value in (params or {}).items():
        values: Iterable[object] = [value] if isinstance(value, str | int) else value
        for item in values:
            if not isinstance(item, str | int) or isinstance(item, bool):
                raise InvalidSearch(f"search {resource_type}: parameter {name!r} has a non-string value")
            pairs.append((name, str(item)))
    return pairs


def next_page_params(bundle: Resource) -> dict[str, Any] | None:
    for link in bundle.get("link", []):
        if link.get("relation") == "next" and link.get("url"):
            params: dict[str, Any] = {}
            for name, value in parse_qsl(urlsplit(link["url"]).query, keep_blank_values=True):
                if name in params:
                    # Repeated names (date=ge..&date=le..) must survive the round trip.
                    previous = params[name]
                    params[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
                else:
                    params[name] = value
            return params
    return None


def check_splittable(entries: list[Resource], size: int) -> None:
    """A transaction split in chunks is atomic per chunk only: refuse to split one whose entries
    depend on each other (a reference to another entry's `urn:uuid:` fullUrl, two entries on one
    resource), which would break between chunks."""
    targets: set[str] = set()
    for i, entry in enumerate(entries):
        if str(entry.get("fullUrl") or "").startswith(("urn:uuid:", "urn:oid:")):
            raise InvalidResource(
                f"transaction: {len(entries)} entries are over the server's limit of {size} "
                f"(VIGIL_FHIR_TRANSACTION_SIZE) and entry {i} has a temporary fullUrl other entries may "
                "refer to; such a transaction cannot be split"
            )
        url = str((entry.get("request") or {}).get("url") or "").split("?")[0]
        if url and url in targets and "/" in url:
            raise InvalidResource(
                f"transaction: {len(entries)} entries are over the server's limit of {size} "
                f"(VIGIL_FHIR_TRANSACTION_SIZE) and two entries write {url}; such a transaction cannot be split"
            )
        targets.add(url)


def first_version(response: httpx.Response, body: Resource | None, resource_type: str) -> bool:
    location = response.headers.get("Content-Location") or response.headers.get("Location")
    versions = {location_ids(location, resource_type)[1], etag_version(response.headers.get("ETag")),
                meta_version(body)}
    return "1" in versions


def meta_version(resource: Resource | None) -> str | None:
    vid = ((resource or {}).get("meta") or {}).get("versionId")
    return str(vid) if vid is not None else None


def without_meta(resource: Resource) -> Resource:
    return {k: v for k, v in resource.items() if k != "meta"}


def etag_version(etag: str | None) -> str | None:
    if not etag:
        return None
    value = etag.strip()
    value = value[2:] if value.startswith("W/") else value
    return value.strip('"') or None


def location_ids(location: str | None, resource_type: str) -> tuple[str | None, str | None]:
    if not location:
        return None, None
    segments = urlsplit(location).path.strip("/").split("/")
    for i, segment in enumerate(segments[:-1]):
        if segment == resource_type:
            id_ = segments[i + 1]
            has_version = i + 3 < len(segments) and segments[i + 2] == "_history"
            return id_, segments[i + 3] if has_version else None
    return None, None
