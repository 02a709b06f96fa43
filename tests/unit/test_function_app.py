"""Smoke test: the Functions host indexes exactly these functions with these triggers.

An import error in function_app.py makes Azure index zero functions while other tests pass;
this test is what catches it."""

from __future__ import annotations

import function_app
from runtime.host_functions import registered_functions


def _bindings() -> dict[str, dict]:
    out = {}
    for fn in registered_functions(function_app.app):
        trigger = next(b for b in fn.get_bindings_dict()["bindings"] if str(b["type"]).endswith("Trigger"))
        out[fn.get_function_name()] = trigger
    return out


def test_function_names_and_trigger_types() -> None:
    triggers = {name: b["type"] for name, b in _bindings().items()}
    assert triggers == {
        "ingest_device_messages": "eventHubTrigger",
        "on_fhir_event": "eventGridTrigger",
        "alert_sweep": "timerTrigger",
        "escalation_sweep": "timerTrigger",
        "reminder_sweep": "timerTrigger",
        "retention_purge": "timerTrigger",
        "http_ingest": "httpTrigger",
        "health": "httpTrigger",
        "acknowledge_alert": "httpTrigger",
        "on_acs_event": "eventGridTrigger",
        "pull_fhir_changes": "timerTrigger",
        "fhir_notification": "httpTrigger",
        "console": "httpTrigger",
        "lake_export": "timerTrigger",
    }


def test_event_hub_binding_takes_batches_from_the_configured_hub() -> None:
    b = _bindings()["ingest_device_messages"]
    assert str(getattr(b["cardinality"], "value", b["cardinality"])) == "many"
    assert b["eventHubName"] == "%VIGIL_EVENT_HUB_NAME%"
    assert b["connection"] == "VIGIL_EVENT_HUB_CONNECTION"


def test_timer_schedule_is_six_field_ncrontab() -> None:
    assert len(_bindings()["alert_sweep"]["schedule"].split()) == 6


def test_http_ingest_requires_a_function_key() -> None:
    b = _bindings()
    assert str(getattr(b["http_ingest"]["authLevel"], "value", b["http_ingest"]["authLevel"])).lower() == "function"
    assert str(getattr(b["health"]["authLevel"], "value", b["health"]["authLevel"])).lower() == "anonymous"
    # The signed, single-use link is the credential of the acknowledgement endpoint.
    ack = b["acknowledge_alert"]
    assert str(getattr(ack["authLevel"], "value", ack["authLevel"])).lower() == "anonymous"


def test_business_code_does_not_import_azure_functions() -> None:
    from pathlib import Path

    root = Path(function_app.__file__).parent
    offenders = [
        str(p.relative_to(root))
        for pkg in ("common", "fhirstore", "ingest", "rules", "handlers", "notifications")
        for p in (root / pkg).rglob("*.py")
        if "azure.functions" in p.read_text() or "import azure.functions" in p.read_text()
    ]
    assert offenders == []
