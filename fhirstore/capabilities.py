"""Whether a FHIR server supports a search parameter Vigil depends on, from the server's own word.

A FHIR server need not refuse a search parameter it does not know: R4 lets it ignore the parameter
(`Prefer: handling=lenient`, the default on most servers), and some answer an empty Bundle instead
(Medplum). Ignoring is harmless to a sweep that re-decides every Task it reads; an empty answer is
not: the sweep would see nothing due, forever, silently. So Vigil asks the server what it supports
before relying on a custom parameter, in this order (FHIR R4 §2.21.0.3 "Capability Statement",
§3.1.1.5.17 "SearchParameter"):

1. The CapabilityStatement (`GET [base]/metadata`): `rest[mode=server].resource[type].searchParam`.
   Health Data Services lists a custom parameter there once it is registered *and* reindexed,
   which is when searching by it works; HAPI lists registered parameters.
2. Only when the server serves no CapabilityStatement, or one that lists no search parameter for
   the type at all: an active `SearchParameter` registration whose code and base match, on a server
   that does not answer a search by a parameter it does not know with an empty result. Such a
   server (Medplum's FHIR router) accepts a registration without indexing it, so the registration
   alone would bring back the silent empty answer; it is found out by searching for the
   registration itself with one more, made-up parameter (docs/fhir-servers.md).

Anything else counts as unsupported, and the caller uses its fallback.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fhirstore.errors import FhirError
from fhirstore.paging import TooManyPages, search_all
from fhirstore.port import FhirStore, Resource, ServesCapabilities

log = logging.getLogger(__name__)

# Answers that mean "this server does not serve that": anything else (an outage, 401/403, 429)
# propagates, so a probe during an outage is not mistaken for a server without the feature.
_NOT_SERVED = frozenset({400, 404, 405, 406, 410, 422, 501})


@dataclass(frozen=True)
class ParamSupport:
    resource_type: str
    code: str
    supported: bool
    source: str  # capability-statement | search-parameter | embedded | none
    detail: str  # one sentence for logs and CLI messages (no server URL, no data)


def capability_statement(store: FhirStore) -> Resource | None:
    """The store's CapabilityStatement, or None when it serves none (or none could be read)."""
    from fhirstore.sqlite import SqliteFhirStore

    if isinstance(store, SqliteFhirStore):
        from fhirstore.rest import capability_statement as embedded

        return embedded("")
    if not isinstance(store, ServesCapabilities):
        return None
    try:
        statement = store.capabilities()
    except FhirError as exc:
        if exc.status not in _NOT_SERVED:
            raise
        log.info("the FHIR server serves no CapabilityStatement: HTTP %s", exc.status)
        return None
    if not isinstance(statement, dict) or statement.get("resourceType") != "CapabilityStatement":
        return None
    return statement


def search_params_listed(statement: Resource, resource_type: str) -> set[str] | None:
    """The search parameter codes a CapabilityStatement lists for a type (None: it lists none)."""
    names: set[str] = set()
    listed = False
    for rest in statement.get("rest") or []:
        if not isinstance(rest, dict) or rest.get("mode", "server") != "server":
            continue
        for resource in rest.get("resource") or []:
            if isinstance(resource, dict) and resource.get("type") == resource_type:
                params = resource.get("searchParam")
                if isinstance(params, list) and params:
                    listed = True
                    names |= {p["name"] for p in params if isinstance(p, dict) and isinstance(p.get("name"), str)}
        # Parameters that apply to every type (_id, _lastUpdated, ...).
        common = rest.get("searchParam")
        if isinstance(common, list):
            names |= {p["name"] for p in common if isinstance(p, dict) and isinstance(p.get("name"), str)}
    return names if listed else None


def search_param_support(store: FhirStore, resource_type: str, code: str) -> ParamSupport:
    """Whether searching `resource_type` by `code` is supported, and where that was read."""
    from fhirstore.sqlite import SqliteFhirStore

    statement = capability_statement(store)
    listed = search_params_listed(statement, resource_type) if statement is not None else None
    if listed is not None:
        supported = code in listed
        source = "embedded" if isinstance(store, SqliteFhirStore) else "capability-statement"
        where = "the embedded store's search parameters" if source == "embedded" else \
            "the server's CapabilityStatement"
        return ParamSupport(resource_type, code, supported, source if supported else "none",
                            f"{resource_type} search parameter '{code}' is "
                            f"{'listed' if supported else 'not listed'} in {where}")
    registration = _registration(store, resource_type, code)
    if registration is not None and _empties_unknown_params(store, code):
        return ParamSupport(resource_type, code, False, "none",
                            f"{resource_type} search parameter '{code}' is registered (SearchParameter/"
                            f"{registration.get('id')}), but the server answers a search by a parameter it does "
                            "not know with an empty result and serves no CapabilityStatement listing it, so the "
                            "registration does not show that it is indexed")
    if registration is not None:
        return ParamSupport(resource_type, code, True, "search-parameter",
                            f"{resource_type} search parameter '{code}' is registered (SearchParameter/"
                            f"{registration.get('id')}); the server serves no CapabilityStatement listing it")
    what = "no CapabilityStatement" if statement is None else "a CapabilityStatement without search parameters"
    return ParamSupport(resource_type, code, False, "none",
                        f"{resource_type} search parameter '{code}' is not registered and the server serves {what}")


# A search parameter no server defines: the probe's only use is to be unknown.
_PROBE_PARAM = "vigil-unknown-parameter-probe"


def _empties_unknown_params(store: FhirStore, code: str) -> bool:
    """Whether the server answers a search by an unknown parameter with an empty result. Asked of
    the registration just found, so a server that ignores the parameter returns it again, and one
    in strict handling refuses the search (R4 §3.1.1.5.1 "handling")."""
    try:
        found = store.search("SearchParameter", {"code": code, _PROBE_PARAM: "1", "_count": "1"})
    except FhirError as exc:
        if exc.status not in _NOT_SERVED:
            raise
        return False
    return not found.resources


def _registration(store: FhirStore, resource_type: str, code: str) -> dict[str, Any] | None:
    try:
        found = search_all(store, "SearchParameter", {"code": code, "_count": "50"}, max_pages=5)
    except TooManyPages:
        return None
    except FhirError as exc:
        if exc.status not in _NOT_SERVED:
            raise
        log.info("SearchParameter registrations could not be searched: HTTP %s", exc.status)
        return None
    for param in found:
        base = param.get("base") or []
        if param.get("code") == code and param.get("status") == "active" and resource_type in base:
            return param
    return None
