"""The local host relays the store's events through the `EventOutbox` port the composition root wires."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fhirstore.sqlite import SqliteFhirStore
from runtime.bootstrap import bootstrap
from runtime.host import LocalHost
from runtime.settings import Settings
from tests.support.pipeline import CLINIC_PHONE, make_host


def test_the_embedded_store_is_the_outbox_the_host_relays(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    services = host.services
    assert isinstance(services.store, SqliteFhirStore)
    assert services.outbox is services.store
    services.store.update({"resourceType": "Patient", "id": "p1", "active": True})
    services.store.update({"resourceType": "CarePlan", "id": "c1", "status": "active", "intent": "plan",
                           "subject": {"reference": "Patient/p1"}})
    assert host.pending_store_events() == 2
    assert host.relay_fhir_events() == 2
    assert host.pending_store_events() == 0
    # Only the CarePlan's event goes to the FHIR event function (it handles no Patient events).
    assert host.bus.pending("eg:on_fhir_event") == 1
    services.close()


def test_without_an_outbox_the_host_relays_nothing_and_the_events_stay(tmp_path: Path) -> None:
    services = dataclasses.replace(make_host(tmp_path).services, outbox=None)
    host = LocalHost(services)
    services.store.update({"resourceType": "Patient", "id": "p1", "active": True})
    assert host.pending_store_events() == 0
    assert host.relay_fhir_events() == 0
    assert isinstance(services.store, SqliteFhirStore)
    assert services.store.outbox_size() == 1  # not settled by a host that was given no outbox
    services.close()


def test_a_fhir_server_has_no_outbox(tmp_path: Path) -> None:
    # Nothing is requested at construction: a closed port is enough to build the services.
    settings = Settings.from_env({}, data_dir=tmp_path, contact_phone=CLINIC_PHONE, fhir_url="http://127.0.0.1:9/fhir")
    services = bootstrap(settings)
    assert services.outbox is None
    services.close()
