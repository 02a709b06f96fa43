"""The console over HTTP on the production ASGI app (hypercorn, loopback): sign-in, sessions, CSRF,
rate limiting, audit, and the acknowledgement shared with the SMS link."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from console.audit import ACTION_SYSTEM
from fhirstore.paging import search_all
from handlers.sweeps import run_escalation_sweep
from runtime.bootstrap import messaging
from tests.support.console import MANAGER, NURSE, PASSWORD, Served, demo_services, serve_console


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    services = demo_services(Path(tmp_path_factory.mktemp("console")))
    with serve_console(services) as s:
        yield s
    services.close()


def _login_token(client: httpx.Client) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', client.get("/console/login").text).group(1)


def _sign_in(client: httpx.Client, username: str, password: str = PASSWORD) -> httpx.Response:
    return client.post("/console/login", data={"username": username, "password": password,
                                               "csrf": _login_token(client)})


def _login(served: Served, username: str = NURSE) -> httpx.Client:
    client = httpx.Client(base_url=served.url, timeout=30)
    r = _sign_in(client, username)
    assert r.status_code == 303, r.text
    return client


def _csrf(client: httpx.Client, path: str = "/console/inbox") -> str:
    return re.search(r'name="csrf" value="([^"]+)"', client.get(path).text).group(1)


def _audits(served: Served, action: str) -> list[dict]:
    return [a for a in search_all(served.services.store, "AuditEvent", {})
            if any(c.get("system") == ACTION_SYSTEM and c.get("code") == action for c in a.get("subtype") or [])]


def test_pages_need_a_session(served: Served) -> None:
    client = httpx.Client(base_url=served.url)
    r = client.get("/console/inbox")
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    assert client.post("/console/alerts/ack", data={"task": "x"}).status_code == 401
    assert client.get("/console/inbox", headers={"Cookie": "vigil_console=forged.value.sig"}).status_code == 303


def test_session_cookie_is_httponly_strict_and_signed(served: Served) -> None:
    client = httpx.Client(base_url=served.url)
    r = _sign_in(client, NURSE)
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback; Secure is set when the request came over TLS
    value = cookie.split(";")[0].split("=", 1)[1]
    tampered = value[:-2] + ("AA" if not value.endswith("AA") else "BB")
    assert client.get("/console/inbox", headers={"Cookie": f"vigil_console={tampered}"}).status_code == 303


def test_a_form_without_the_csrf_token_is_refused(served: Served) -> None:
    client = _login(served)
    row = re.search(r'name="task" value="(\w+)"', client.get("/console/inbox").text)
    assert row is not None
    r = client.post("/console/alerts/ack", data={"task": row.group(1)})
    assert r.status_code == 403 and "CSRF" in r.text
    r = client.post("/console/alerts/ack", data={"task": row.group(1), "csrf": "wrong"})
    assert r.status_code == 403
    assert served.services.store.read("Task", row.group(1))["status"] == "requested"


def test_wrong_passwords_are_rate_limited(served: Served) -> None:
    client = httpx.Client(base_url=served.url)
    codes = [_sign_in(client, MANAGER, "wrong-password").status_code for _ in range(6)]
    assert codes[:5] == [401] * 5 and codes[5] == 429
    # Even the right password waits out the window now.
    assert _sign_in(client, MANAGER).status_code == 429
    failed = _audits(served, "login-failed")
    assert len(failed) >= 5 and failed[-1]["outcome"] == "4"
    assert failed[-1]["agent"][0]["who"] == {"reference": "Practitioner/demo-care-manager"}
    assert "wrong-password" not in json.dumps(failed)


def test_the_sign_in_form_has_its_own_csrf_token(served: Served) -> None:
    client = httpx.Client(base_url=served.url)
    # A cross-site sign-in (no token, or a token without its cookie) is refused: no session cookie.
    r = client.post("/console/login", data={"username": NURSE, "password": PASSWORD})
    assert r.status_code == 403 and "vigil_console=" not in r.headers.get("set-cookie", "")
    token = _login_token(client)
    other = httpx.Client(base_url=served.url)
    r = other.post("/console/login", data={"username": NURSE, "password": PASSWORD, "csrf": token})
    assert r.status_code == 403
    cookie = client.get("/console/login").headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console/login" in cookie
    r = client.post("/console/login", data={"username": NURSE, "password": PASSWORD, "csrf": token})
    assert r.status_code == 303
    assert _audits(served, "login")[-1]["agent"][0]["who"] == {"reference": "Practitioner/demo-nurse"}


def test_many_usernames_from_one_address_are_rate_limited(tmp_path: Path) -> None:
    """Password spraying (one address, a different username each time) is slowed per address."""
    import asyncio

    from console.views import add_console_routes
    from runtime.bootstrap import bootstrap
    from runtime.http_app import HttpApp, RouteRegistry
    from runtime.settings import Settings

    services = bootstrap(Settings.from_env({}, data_dir=tmp_path, contact_phone="+15550100999"))
    registry = RouteRegistry()
    add_console_routes(registry, services, trust_app_service=False)
    app = HttpApp("t", registry)

    def call(method: str, address: str, body: bytes = b"", cookie: str = "") -> tuple[int, dict[str, str], str]:
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        headers = [(b"host", b"vigil.example"), (b"content-type", b"application/x-www-form-urlencoded"),
                   (b"content-length", str(len(body)).encode())] + ([(b"cookie", cookie.encode())] if cookie else [])
        scope = {"type": "http", "method": method, "path": "/console/login", "raw_path": b"/console/login",
                 "query_string": b"", "headers": headers, "scheme": "http", "client": (address, 5000)}
        asyncio.run(app(scope, receive, send))
        hdrs = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
        return sent[0]["status"], hdrs, b"".join(m.get("body", b"") for m in sent[1:]).decode()

    def attempt(address: str, username: str) -> int:
        _, hdrs, page = call("GET", address)
        token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        cookie = hdrs["set-cookie"].split(";")[0]
        form = f"username={username}&password=wrong-password&csrf={token}".encode()
        return call("POST", address, form, cookie)[0]

    try:
        codes = [attempt("203.0.113.7", f"spray{i:02d}") for i in range(21)]
        assert codes[:20] == [401] * 20 and codes[20] == 429  # each username once: the address is limited
        assert attempt("198.51.100.9", "spray99") == 401  # another address is not
    finally:
        services.close()


def test_app_service_headers_are_not_trusted_on_vigil_serve(served: Served) -> None:
    principal = base64.b64encode(json.dumps({"claims": [{"typ": "roles", "val": "admin"}]}).encode()).decode()
    r = httpx.get(served.url + "/console/inbox", headers={"X-MS-CLIENT-PRINCIPAL": principal,
                                                         "X-MS-CLIENT-PRINCIPAL-ID": "abc"})
    assert r.status_code == 303


def test_roles_limit_pages(served: Served) -> None:
    client = _login(served)  # a nurse
    assert client.get("/console/enroll").status_code == 403
    assert client.get("/console/gaps").status_code == 200


def test_viewing_a_patient_is_audited_and_the_url_has_no_name(served: Served) -> None:
    client = _login(served)
    inbox = client.get("/console/inbox").text
    pid = re.search(r'href="/console/patients/([\w.-]+)"', inbox).group(1)
    before = len(_audits(served, "view-patient"))
    page = client.get(f"/console/patients/{pid}")
    assert page.status_code == 200 and "<svg" in page.text
    events = _audits(served, "view-patient")
    assert len(events) == before + 1
    assert events[-1]["agent"][0]["who"]["reference"] == "Practitioner/demo-nurse"
    assert {"what": {"reference": f"Patient/{pid}"}} in events[-1]["entity"]
    patient = served.services.store.read("Patient", pid)
    for link in re.findall(r'href="([^"]+)"', inbox + page.text):
        assert patient["name"][0]["family"] not in link and patient["birthDate"] not in link


def test_console_ack_is_the_sms_link_operation_and_stops_the_chain(served: Served) -> None:
    client = _login(served)
    task_id = re.search(r'name="task" value="(\w+)"', client.get("/console/inbox").text).group(1)
    r = client.post("/console/alerts/ack", data={"task": task_id, "csrf": _csrf(client)})
    assert r.status_code == 303
    store = served.services.store
    task = store.read("Task", task_id)
    assert task["status"] == "accepted" and task["owner"]["reference"] == "Practitioner/demo-nurse"
    issue = store.read("DetectedIssue", task_id)
    assert any(
        (m.get("author") or {}).get("reference") == "Practitioner/demo-nurse" for m in issue.get("mitigation", [])
    )

    # The escalation sweep, run long after the next level was due, sends nothing more for it.
    def messages(issue_id: str) -> int:
        return len([c for c in search_all(store, "Communication", {}) if any(
            a.get("reference") == f"DetectedIssue/{issue_id}" for a in c.get("about") or [])])

    others = [t["id"] for t in search_all(store, "Task", {"status": "requested"})]
    sent = messages(task_id)
    others_before = sum(messages(o) for o in others)
    clock = served.services.clock
    clock.advance(timedelta(hours=12))  # type: ignore[attr-defined]
    try:
        run_escalation_sweep(messaging(served.services))
    finally:
        clock.advance(timedelta(hours=-12))  # type: ignore[attr-defined]
    assert messages(task_id) == sent
    assert sum(messages(o) for o in others) > others_before  # the chains not acknowledged moved on
    assert _audits(served, "acknowledge-alert")


def test_operations_health_json_counts_dead_letters_by_reason(served: Served) -> None:
    client = _login(served)
    body = client.get("/console/operations.json").json()
    expected: dict[str, int] = {}
    for letter in served.services.dead_letters.list(include_replayed=True):
        expected[letter.reason] = expected.get(letter.reason, 0) + 1
    assert body["dead_letters_24h"] == expected and body["dead_letters_24h_total"] == 6  # the demo's malformed six
    assert body["bus_backlog"] == sum(q["pending"] for q in body["queues"].values())
    assert "vigil-events" not in body["queues"]
    # Monitors use the local token; without it the endpoint refuses.
    from runtime.bootstrap import local_token

    assert httpx.get(served.url + "/api/operations").status_code == 401
    token = local_token(served.services.settings)
    assert httpx.get(served.url + "/api/operations", headers={"Authorization": f"Bearer {token}"}).json() == body
    assert client.get("/console/operations").status_code == 200


def test_bulk_acknowledge_assign_and_resolve_with_an_outcome(served: Served) -> None:
    client = _login(served)
    inbox = client.get("/console/inbox").text
    tasks = re.findall(r'type="checkbox" name="task" value="(\w+)"', inbox)
    assert len(tasks) >= 3
    r = client.post("/console/alerts/ack", data={"task": tasks[:2], "csrf": _csrf(client)})
    assert r.headers["location"] == "/console/inbox?notice=2+acknowledged"
    store = served.services.store
    assert [store.read("Task", t)["status"] for t in tasks[:2]] == ["accepted", "accepted"]
    third = tasks[2]
    client.post(f"/console/alerts/{third}/assign", data={"practitioner": "demo-physician", "csrf": _csrf(client)})
    assert store.read("Task", third)["owner"]["reference"] == "Practitioner/demo-physician"
    bad = client.post(f"/console/alerts/{third}/resolve", data={"outcome": "shrug", "csrf": _csrf(client)})
    assert bad.status_code == 400 and "contacted-patient" in bad.text
    client.post(f"/console/alerts/{third}/resolve", data={"outcome": "contacted-patient", "note": "called, fine",
                                                          "csrf": _csrf(client)})
    issue = store.read("DetectedIssue", third)
    assert issue["status"] == "final"
    # The outcome and the note are on the record, by the nurse, not only in the audit trail.
    assert issue["mitigation"][-1]["action"]["text"] == "resolved by staff: contacted-patient: called, fine"
    assert issue["mitigation"][-1]["author"] == {"reference": "Practitioner/demo-nurse"}
    task = store.read("Task", third)
    assert task["status"] == "completed" and task["note"][-1]["text"] == "contacted-patient: called, fine"
    resolved = _audits(served, "resolve-alert")[-1]
    assert resolved["entity"][0]["description"] == "contacted-patient: called, fine"
    # An acknowledged alert can still be handed to someone else while its episode is open.
    first = tasks[0]
    assert 'id="f-assign"' in client.get(f"/console/alerts/{first}").text
    client.post(f"/console/alerts/{first}/assign", data={"practitioner": "demo-physician", "csrf": _csrf(client)})
    assert store.read("Task", first)["owner"]["reference"] == "Practitioner/demo-physician"
    page = client.get(f"/console/alerts/{third}").text
    assert 'id="episode-status">closed' in page


def test_a_stalled_pipeline_notifies_the_care_team_once_an_hour(served: Served) -> None:
    from handlers.pipeline_health import check_pipeline
    from runtime.bootstrap import pipeline_deps

    store = served.services.store

    def notices() -> int:
        return len(
            [
                c
                for c in search_all(store, "Communication", {"category": "urn:vigil:message-category|notification"})
                if "pipeline needs attention" in c["payload"][0]["contentString"]
            ]
        )

    assert check_pipeline(pipeline_deps(served.services)) == []  # healthy: nothing sent
    assert notices() == 0
    problems = check_pipeline(pipeline_deps(served.services), max_dead_letters=1)
    assert problems == ["6 dead letters in 24 h"]
    check_pipeline(pipeline_deps(served.services), max_dead_letters=1)  # the same hour: no second notice
    assert notices() == 1


def test_the_inbox_and_the_gap_list_are_audited_views_of_the_patients_they_show(served: Served) -> None:
    client = _login(served)
    inbox = client.get("/console/inbox").text
    shown = {f"Patient/{p}" for p in re.findall(r'href="/console/patients/([\w.-]+)"', inbox)}
    viewed = _audits(served, "view-inbox")[-1]
    assert shown and {e["what"]["reference"] for e in viewed["entity"]} == shown
    gaps = client.get("/console/gaps").text
    listed = {f"Patient/{p}" for p in re.findall(r'href="/console/patients/([\w.-]+)#contact"', gaps)}
    assert listed
    assert {e["what"]["reference"] for e in _audits(served, "view-gaps")[-1]["entity"]} == listed
    # The poll behind live updates carries ids and states only, and is no patient view.
    before = len(_audits(served, "view-inbox"))
    body = client.get("/console/inbox.json").json()
    assert set(body) == {"count", "signature", "alerts"} and len(_audits(served, "view-inbox")) == before
    assert body["alerts"] and all(set(a) == {"id", "severity", "status", "priority"} for a in body["alerts"])
    assert not any(f"Patient/{p}" in json.dumps(body) or p in json.dumps(body) for p in {s[8:] for s in shown})
    assert f'data-signature="{body["signature"]}"' in inbox


def test_inbox_filters_by_severity_and_program(served: Served) -> None:
    client = _login(served)
    high = client.get("/console/inbox", params={"severity": "high"}).text
    severities = re.findall(r'<tr class="sev-(\w+)', high)
    assert severities and set(severities) == {"high"}
    copd = client.get("/console/inbox", params={"program": "copd"}).text
    programs = re.findall(r"<td>(hypertension|copd|heart-failure|diabetes)</td>", copd)
    assert set(programs) <= {"copd"}
    everything = client.get("/console/inbox").text
    assert len(re.findall(r"<tr class=\"sev-", everything)) >= len(severities) + len(programs)


def test_gap_worklist_lists_the_longest_silence_first(served: Served) -> None:
    from console.queries import data_gaps

    client = _login(served)
    page = client.get("/console/gaps").text
    shown = [int(d) for d in re.findall(r"<tr><td>(\d+)</td>", page)]
    assert shown == sorted(shown, reverse=True) and shown
    assert len(shown) == len(data_gaps(served.services.store, served.services.clock.now()))


def test_the_identity_setting_is_honoured_except_on_vigil_serve(tmp_path: Path) -> None:
    from console.views import add_console_routes
    from runtime.bootstrap import bootstrap
    from runtime.host import LocalHost
    from runtime.http_app import HttpApp, RouteRegistry
    from runtime.http_server import build_app
    from runtime.settings import Settings

    services = bootstrap(Settings.from_env({}, data_dir=tmp_path, console_identity="app-service",
                                           contact_phone="+15550100999"))
    principal = base64.b64encode(json.dumps({"claims": [{"typ": "roles", "val": "nurse"}]}).encode()).decode()
    headers = [(b"x-ms-client-principal", principal.encode()), (b"x-ms-client-principal-id", b"oid-1"),
               (b"host", b"vigil.example")]

    def status(app: HttpApp) -> int:
        import asyncio

        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/console/gaps", "raw_path": b"/console/gaps",
                 "query_string": b"", "headers": headers, "scheme": "https"}
        asyncio.run(app(scope, receive, send))
        return sent[0]["status"]

    registry = RouteRegistry()
    add_console_routes(registry, services)  # an embedding that follows the setting (a front door)
    assert status(HttpApp("t", registry)) == 200
    try:
        assert status(build_app(LocalHost(services), "t")) == 303  # vigil serve: sent to sign in
    finally:
        services.close()


def test_a_care_manager_sets_a_rule_override_and_the_patient_page_shows_it_with_contact_details(
        served: Served) -> None:
    from console.views import accounts_for

    # Its own care manager: another test locks manager1 out on purpose.
    accounts_for(served.services).add("manager2", "care-manager", PASSWORD, "demo-care-manager")
    client = _login(served, "manager2")
    pid = next(p["subject"]["reference"].split("/")[1]
               for p in search_all(served.services.store, "CarePlan", {"status": "active"})
               if "urn:vigil:program:hypertension" in p.get("instantiatesCanonical", []))
    token = _csrf(client, "/console/enroll")
    r = client.post("/console/enroll/override", data={"csrf": token, "patient": pid, "program": "hypertension",
                                                      "rule": "htn-weekly-mean-above-goal",
                                                      "param": "systolic_goal", "value": "135 mm[Hg]"})
    assert r.status_code == 200 and f"CarePlan/{pid}-hypertension" in r.text
    bad = client.post("/console/enroll/override", data={"csrf": token, "patient": pid, "program": "hypertension",
                                                        "rule": "htn-weekly-mean-above-goal",
                                                        "param": "systolic_goal", "value": "135 kg"})
    assert bad.status_code == 400 and "override" in bad.text
    page = client.get(f"/console/patients/{pid}").text
    assert "override: htn-weekly-mean-above-goal systolic_goal = 135 mm[Hg]" in page
    phone = served.services.store.read("Patient", pid)["telecom"][0]["value"]
    assert f'data-field="phone">{phone}<' in page
    assert _audits(served, "enroll-override")
