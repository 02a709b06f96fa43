"""The console in a real headless Chromium: what a nurse and a care manager do with the demo's day."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from fhirstore.paging import search_all
from handlers.sweeps import run_escalation_sweep
from runtime import cli
from runtime.bootstrap import messaging
from tests.browser.conftest import SCREENSHOTS
from tests.support.console import AS_OF, MANAGER, NURSE, PASSWORD, Served, demo_services, serve_console

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    services = demo_services(Path(tmp_path_factory.mktemp("console-browser")))
    with serve_console(services) as s:
        yield s
    services.close()


@pytest.fixture
def page(browser_context: Any, served: Served) -> Iterator[Any]:
    browser_context.clear_cookies()
    p = browser_context.new_page()
    p.set_default_timeout(15000)
    yield p
    p.close()


def _login(page: Any, served: Served, username: str = NURSE) -> None:
    page.goto(served.url + "/console/inbox")
    assert page.url.endswith("/console/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/console/inbox")


def _shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def test_login_and_the_inbox_shows_the_demo_alerts(page: Any, served: Served) -> None:
    _login(page, served)
    rows = page.locator("table.inbox tbody tr[data-alert]")
    open_issues = search_all(served.services.store, "DetectedIssue", {"status": "preliminary"})
    assert rows.count() == len(open_issues) > 0
    severities = rows.evaluate_all("rs => rs.map(r => r.className.match(/sev-(\\w+)/)[1])")
    rank = {"low": 0, "moderate": 1, "high": 2}
    assert severities == sorted(severities, key=lambda s: -rank[s])  # most severe first
    assert page.locator("td.cmp").first.inner_text().strip()  # the value against its threshold
    _shot(page, "inbox.png")


def test_acknowledge_one_and_its_escalation_stops(page: Any, served: Served) -> None:
    _login(page, served)
    row = page.locator("table.inbox tbody tr[data-status=open]").first
    alert_id = row.get_attribute("data-alert")
    page.click(f"tr[data-alert='{alert_id}'] a[href*='/console/alerts/']")
    page.wait_for_url(f"**/console/alerts/{alert_id}")
    page.click("#ack")
    page.wait_for_url(f"**/console/alerts/{alert_id}")
    assert page.locator("#ack-state").inner_text() == "acknowledged"
    assert "accepted" in page.locator("#timeline").inner_text()
    store = served.services.store
    task = store.read("Task", alert_id)
    assert task["status"] == "accepted" and task["owner"]["reference"] == "Practitioner/demo-nurse"
    before = page.locator("#messages tbody tr").count()
    from datetime import timedelta

    served.services.clock.advance(timedelta(hours=12))  # type: ignore[attr-defined]
    try:
        run_escalation_sweep(messaging(served.services))
    finally:
        served.services.clock.advance(timedelta(hours=-12))  # type: ignore[attr-defined]
    page.reload()
    assert page.locator("#messages tbody tr").count() == before  # no further escalation message
    _shot(page, "alert.png")


def test_a_chart_renders_with_its_threshold_line(page: Any, served: Served) -> None:
    _login(page, served)
    patient = next(p["subject"]["reference"].split("/")[1]
                   for p in search_all(served.services.store, "CarePlan", {"status": "active"})
                   if "urn:vigil:program:hypertension" in p.get("instantiatesCanonical", []))
    page.goto(f"{served.url}/console/patients/{patient}?days=30")
    chart = page.locator("svg.chart[data-metric=systolic_bp]")
    assert chart.count() == 1
    assert chart.locator("polyline.series").get_attribute("data-count") not in (None, "0")
    thresholds = chart.locator("line.threshold")
    assert thresholds.count() >= 1
    values = [float(v) for v in thresholds.evaluate_all("ls => ls.map(l => l.dataset.value)")]
    assert 180.0 in values  # the hypertensive-crisis reading threshold of the shipped library
    assert chart.bounding_box()["width"] > 300  # drawn, not just in the DOM
    assert re.match(r"\d+ of 30 days", page.locator("#adherence").inner_text())
    _shot(page, "patient.png")


def test_enroll_a_patient_and_register_a_device(page: Any, served: Served) -> None:
    _login(page, served, MANAGER)
    page.goto(served.url + "/console/enroll")
    form = page.locator("#f-patient")
    form.locator("input[name=given]").fill("Percival")
    form.locator("input[name=family]").fill("Fairweather")
    form.locator("input[name=birth_date]").fill("1948-08-05")
    form.locator("input[name=phone]").fill("+15550100777")
    form.locator("input[name=time_zone]").fill("America/Chicago")
    form.locator("button").click()
    done = page.locator("#done").inner_text()
    patient_id = re.search(r"Patient/([\w.-]+)", done).group(1)
    for form_id, fields in (("#f-program", {}), ("#f-device", {"identifier": "cuff-77001", "kind": "BP cuff"}),
                            ("#f-goal", {"metric": "systolic_bp", "high": "135"})):
        form = page.locator(form_id)
        form.locator("input[name=patient]").fill(patient_id)
        for name, value in fields.items():
            form.locator(f"input[name={name}]").fill(value)
        if form_id == "#f-program":
            form.locator("select[name=program]").select_option("hypertension")
        form.locator("button").click()
        assert page.locator("#done").is_visible(), page.content()
    _shot(page, "enroll.png")
    store = served.services.store
    patient = store.read("Patient", patient_id)
    assert patient["name"][0]["family"] == "Fairweather"
    assert {"url": "http://hl7.org/fhir/StructureDefinition/timezone", "valueCode": "America/Chicago"} in patient[
        "extension"
    ]
    device = store.read("Device", "cuff-77001")
    assert device["patient"]["reference"] == f"Patient/{patient_id}" and device["identifier"] == [
        {"value": "cuff-77001"}
    ]
    plan = store.read("CarePlan", f"{patient_id}-hypertension")
    assert plan["status"] == "active"
    # Wrong input is refused with what and why, and nothing is written.
    form = page.locator("#f-device")
    form.locator("input[name=patient]").fill(patient_id)
    form.locator("input[name=identifier]").fill("bad id with spaces")
    form.locator("button").click()
    assert "device identifier" in page.locator("p.error").inner_text()
    page.goto(f"{served.url}/console/patients/{patient_id}")
    assert "cuff-77001" in page.locator("#devices").inner_text()
    assert "hypertension" in page.locator("#programs").inner_text()


def test_billing_page_matches_vigil_report_billing(page: Any, served: Served) -> None:
    _login(page, served, MANAGER)
    patient = "demo-003"
    page.goto(f"{served.url}/console/patients/{patient}")
    form = page.locator("form[action='/console/time']")
    form.locator("input[name=minutes]").fill("41")
    form.locator("input[name=interactive]").check()
    form.locator("button").click()
    page.goto(served.url + "/console/billing?month=2026-11")
    _shot(page, "billing.png")
    shown = {r.get_attribute("data-patient"): r.locator("td.codes").inner_text().split()
             for r in page.locator("#billing tbody tr").all()}
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["--data-dir", str(served.services.settings.data_dir), "report", "billing",
                         "--month", "2026-11", "--as-of", AS_OF.isoformat()]) == 0
    reported = {line.split()[0]: line.split()[4:] for line in out.getvalue().splitlines()[1:]}
    reported = {k: ([] if v == ["-"] else v) for k, v in reported.items()}
    assert shown == reported
    assert shown[patient][-2:] == ["99457", "99458"]


def test_requests_without_session_or_csrf_token_are_refused(page: Any, browser_context: Any, served: Served) -> None:
    _login(page, served)
    task = next(t["id"] for t in search_all(served.services.store, "Task", {"status": "requested"}))
    # Signed in, but no CSRF token in the form: refused, nothing changes.
    r = page.request.post(served.url + "/console/alerts/ack", form={"task": task})
    assert r.status == 403
    assert served.services.store.read("Task", task)["status"] == "requested"
    # No session at all.
    browser_context.clear_cookies()
    r = page.request.post(served.url + "/console/alerts/ack", form={"task": task, "csrf": "x"})
    assert r.status == 401
    page.goto(served.url + "/console/inbox")
    assert page.url.endswith("/console/login")


def test_snooze_one_direction_and_the_other_still_alerts(page: Any, served: Served) -> None:
    import json
    from datetime import timedelta

    from runtime.bootstrap import install

    store = served.services.store
    diabetic = sorted(
        p["subject"]["reference"].split("/")[1]
        for p in search_all(store, "CarePlan", {"status": "active"})
        if "urn:vigil:program:diabetes" in p.get("instantiatesCanonical", [])
    )
    pid = next(p for p in diabetic if not [i for i in search_all(store, "DetectedIssue", {"patient": f"Patient/{p}"})
                                           if i["code"]["coding"][0]["code"].startswith("dm-")])
    _login(page, served)
    page.goto(f"{served.url}/console/patients/{pid}")
    form = page.locator("#f-snooze")
    form.locator("select[name=metric]").select_option("glucose")
    form.locator("select[name=direction]").select_option("high")
    form.locator("button").click()
    assert "glucose high snoozed" in page.locator("#snoozes").inner_text()
    _shot(page, "snooze.png")

    install(served.services)  # the functions the host runs use the installed services
    for value, minutes in ((262, 40), (61, 20)):
        at = (AS_OF - timedelta(minutes=minutes)).isoformat()
        served.host.publish_device_messages(
            [
                json.dumps(
                    {
                        "deviceId": f"{pid}-meter",
                        "patientId": pid,
                        "type": "glucose",
                        "time": at,
                        "values": {"glucose": value},
                    }
                ).encode()
            ]
        )
    assert served.host.run_until_idle(timeout_s=60)
    page.goto(served.url + "/console/inbox")
    titles = [r.locator("td").nth(2).inner_text() for r in page.locator("table.inbox tbody tr[data-alert]").all()
              if r.locator(f"a[href='/console/patients/{pid}']").count()]
    assert any("low" in t.lower() or "hypoglyc" in t.lower() for t in titles), titles
    assert not any("ketone" in t.lower() for t in titles), titles


def test_the_inbox_updates_without_a_reload(page: Any, served: Served) -> None:
    """An alert acknowledged elsewhere (here by the SMS link's operation) changes its row in an open
    inbox without a reload; a box the nurse ticked stays ticked."""
    from handlers.acknowledge import record_acknowledgement

    _login(page, served)
    page.goto(served.url + "/console/inbox?refresh=2")
    open_rows = page.locator("table.inbox tbody tr[data-status=open]")
    assert open_rows.count() >= 2
    first, second = (open_rows.nth(i).get_attribute("data-alert") for i in (0, 1))
    page.check(f"tr[data-alert='{second}'] input[type=checkbox]")
    page.evaluate("window.__marker = 'same page'")  # gone if the page reloaded
    record_acknowledgement(messaging(served.services), first, "Practitioner/demo-physician")
    page.wait_for_selector(f"tr[data-alert='{first}'][data-status=acknowledged]", timeout=20000)
    assert page.evaluate("window.__marker") == "same page"
    assert page.is_checked(f"tr[data-alert='{second}'] input[type=checkbox]")
    assert "demo-physician" in page.locator(f"tr[data-alert='{first}'] td.status").inner_text()
    assert page.locator("#live").inner_text().startswith("Updated")
