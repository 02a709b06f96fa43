"""The escalation sweep on a FHIR server without Vigil's `escalation-due` search parameter.

Such a server may answer a search by a parameter it does not know with an empty Bundle (Medplum
does), so a sweep that trusted the search would advance nothing, ever, and say nothing. The sweep
asks the server's CapabilityStatement (or its SearchParameter registrations) first; without the
parameter it reads every open Task, and reports the missing capability once. These tests run the
HTTP adapter against the project's own FHIR facade, configured not to know the parameter.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from common.clock import FixedClock, iso
from fhirstore.capabilities import search_param_support
from fhirstore.errors import ServerError
from fhirstore.http_store import HttpFhirStore
from handlers.messaging import Messaging
from handlers.sweeps import due_search_support, run_escalation_sweep
from runtime.bootstrap import Services, bootstrap, messaging
from runtime.checks import server_capability_warnings
from runtime.settings import Settings
from tests.integration.test_escalation_sweep import CHAINS, DOCTOR, NURSE, level, open_task, texts_to
from tests.support.fhir_server import serve_store
from tests.support.pipeline import DAYTIME

MISSING = "does not support Vigil's Task search parameter 'escalation-due'"


@pytest.fixture
def services(data_dir: Path) -> Iterator[Services]:
    s = bootstrap(Settings.from_env({}, data_dir=data_dir), clock=FixedClock(DAYTIME))
    s.store.update({"resourceType": "Practitioner", "id": "nurse-1",
                    "telecom": [{"system": "sms", "value": NURSE}, {"system": "email", "value": "n@example.org"}]})
    s.store.update({"resourceType": "Practitioner", "id": "doctor-1",
                    "telecom": [{"system": "sms", "value": DOCTOR}, {"system": "email", "value": "d@example.org"}]})
    yield s
    s.close()


@pytest.fixture
def m(services: Services) -> Messaging:
    return dataclasses.replace(messaging(services), chains=CHAINS)


def _overdue_and_waiting(s: Services, m: Messaging) -> tuple[list[str], list[str]]:
    overdue = [open_task(s, m, n, timedelta(minutes=16 + n)) for n in (1, 2, 3, 4)]
    waiting = [open_task(s, m, 5, timedelta(minutes=5))]
    return overdue, waiting


def test_a_server_that_answers_the_unknown_parameter_with_nothing_still_escalates(
        services: Services, m: Messaging, captured_logs) -> None:
    s = services
    overdue, waiting = _overdue_and_waiting(s, m)
    with serve_store(s.store, unknown_params={"Task": {"escalation-due"}}) as base, HttpFhirStore(base) as http:
        # What trusting the search would get: nothing due, silently.
        assert http.search("Task", {"status": "requested", "escalation-due": f"le{iso(DAYTIME)}"}).resources == []

        support = due_search_support(http)
        assert (support.supported, support.source) == (False, "none")
        assert "not listed in the server's CapabilityStatement" in support.detail

        over_http = dataclasses.replace(m, store=http)
        m.clock.set(DAYTIME)
        report = run_escalation_sweep(over_http)
        assert (report.examined, report.messages_sent, report.failed) == (5, 4, 0)
        assert [level(s, t) for t in overdue] == ["level-2"] * 4
        assert [level(s, t) for t in waiting] == ["level-1"]
        assert texts_to(s, DOCTOR) == 4

        # The next minute: every open Task is read again, none advances twice, no second warning.
        m.clock.set(DAYTIME + timedelta(minutes=1))
        report = run_escalation_sweep(over_http)
        assert (report.examined, report.messages_sent) == (5, 0)
    warnings = [r for r in captured_logs.records if MISSING in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    assert "reads every open Task" in warnings[0].getMessage()


def test_a_server_that_lists_the_parameter_is_asked_only_for_the_due_tasks(services: Services, m: Messaging,
                                                                           captured_logs) -> None:
    s = services
    overdue, waiting = _overdue_and_waiting(s, m)
    with serve_store(s.store) as base, HttpFhirStore(base) as http:
        support = due_search_support(http)
        assert (support.supported, support.source) == (True, "capability-statement")
        m.clock.set(DAYTIME)
        report = run_escalation_sweep(dataclasses.replace(m, store=http))
    assert (report.examined, report.messages_sent) == (4, 4)
    assert [level(s, t) for t in overdue] == ["level-2"] * 4 and level(s, waiting[0]) == "level-1"
    assert MISSING not in captured_logs.text


def test_the_missing_capability_is_reported_at_start(services: Services) -> None:
    with serve_store(services.store, unknown_params={"Task": {"escalation-due"}}) as base, \
            HttpFhirStore(base) as http:
        [warning] = server_capability_warnings(dataclasses.replace(services, store=http))
    assert MISSING in warning and "docs/fhir-servers.md" in warning
    assert server_capability_warnings(services) == []  # the embedded store has it


# -- servers without a CapabilityStatement: the SearchParameter registration decides -----------

REGISTERED = {"resourceType": "SearchParameter", "id": "sp-1", "url": "urn:vigil:SearchParameter/escalation-due",
              "name": "escalation-due", "status": "active", "code": "escalation-due", "base": ["Task"],
              "type": "date", "expression": "Task.extension('urn:vigil:escalation-due').value"}


def _server(metadata_status: int, registrations: list[dict], *, unknown_empty: bool = False) -> HttpFhirStore:
    """A server without a usable CapabilityStatement. `unknown_empty`: it answers a search by a
    parameter it does not know with an empty Bundle (Medplum's router)."""
    def handle(request: httpx.Request) -> httpx.Response:
        known = {"code", "_count"}
        if unknown_empty and set(request.url.params) - known and request.url.path.endswith("/SearchParameter"):
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "total": 0})
        if request.url.path.endswith("/metadata"):
            if metadata_status != 200:
                return httpx.Response(metadata_status, json={"resourceType": "OperationOutcome", "issue": [
                    {"severity": "error", "code": "not-supported", "diagnostics": "no metadata here"}]})
            return httpx.Response(200, json={"resourceType": "CapabilityStatement", "status": "active",
                                             "rest": [{"mode": "server", "resource": [{"type": "Task"}]}]})
        if request.url.path.endswith("/SearchParameter"):
            assert request.url.params["code"] == "escalation-due"
            return httpx.Response(200, content=json.dumps({
                "resourceType": "Bundle", "type": "searchset", "total": len(registrations),
                "entry": [{"resource": r, "search": {"mode": "match"}} for r in registrations]}))
        return httpx.Response(404)

    return HttpFhirStore("http://fhir.test/fhir", client=httpx.Client(transport=httpx.MockTransport(handle)),
                         max_retries=0)


@pytest.mark.parametrize("metadata_status", [404, 200])  # none, or one that lists no Task parameters
def test_without_a_capability_statement_an_active_registration_counts(metadata_status: int) -> None:
    support = search_param_support(_server(metadata_status, [REGISTERED]), "Task", "escalation-due")
    assert (support.supported, support.source) == (True, "search-parameter")


def test_a_registration_on_a_server_that_answers_unknown_parameters_empty_is_not_trusted() -> None:
    support = search_param_support(_server(404, [REGISTERED], unknown_empty=True), "Task", "escalation-due")
    assert (support.supported, support.source) == (False, "none")
    assert "is registered" in support.detail and "does not show that it is indexed" in support.detail


@pytest.mark.parametrize("registrations", [[], [{**REGISTERED, "status": "retired"}],
                                           [{**REGISTERED, "base": ["Observation"]}]])
def test_without_a_capability_statement_or_an_active_registration_it_is_unsupported(registrations) -> None:
    support = search_param_support(_server(404, registrations), "Task", "escalation-due")
    assert support.supported is False
    assert "not registered and the server serves no CapabilityStatement" in support.detail


def test_an_outage_during_the_check_is_not_taken_for_a_missing_parameter() -> None:
    store = _server(503, [REGISTERED])
    with pytest.raises(ServerError):
        due_search_support(store)
