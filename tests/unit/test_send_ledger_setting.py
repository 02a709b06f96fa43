"""VIGIL_SEND_LEDGER: which send ledger the composition root gives the non-idempotent channels.

What an operator relies on: on Azure (a FHIR server URL) every Functions instance claims sends in
the same place, so two instances cannot both send one SMS; on one machine the SQLite file is used;
the setting overrides either way and a typo is refused with the setting's name.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from common.clock import FixedClock
from fhirstore.sqlite import SqliteFhirStore
from notifications.channels.ledger import FhirSendLedger, SqliteSendLedger
from runtime.bootstrap import bootstrap
from runtime.settings import Settings, SettingsError
from tests.support.fhir_server import serve_store

NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
FHIR_URL = "https://ws-fhir.fhir.azurehealthcareapis.com"


@pytest.mark.parametrize(("env", "kind"), [
    ({}, "sqlite"),  # embedded store: one machine
    ({"VIGIL_FHIR_URL": FHIR_URL}, "fhir"),  # a FHIR server (Azure): shared by every instance
    ({"VIGIL_FHIR_URL": FHIR_URL, "VIGIL_SEND_LEDGER": "sqlite"}, "sqlite"),  # e.g. one VM with a FHIR server
    ({"VIGIL_SEND_LEDGER": "FHIR"}, "fhir"),
    ({"VIGIL_SEND_LEDGER": " fhir "}, "fhir"),
    ({"VIGIL_SEND_LEDGER": ""}, "sqlite"),  # an empty app setting means unset
])
def test_the_ledger_kind_follows_the_store_unless_set(env, kind) -> None:
    assert Settings.from_env(env).send_ledger_kind == kind


@pytest.mark.parametrize("value", ["redis", "sql", "fhir,sqlite"])
def test_an_unknown_ledger_is_refused_by_name(value) -> None:
    with pytest.raises(SettingsError, match=r"VIGIL_SEND_LEDGER must be 'sqlite' or 'fhir'"):
        Settings.from_env({"VIGIL_SEND_LEDGER": value})


def _smtp_channels(tmp_path: Path) -> Path:
    # SMTP needs a ledger (it is not idempotent); building the channel opens no connection.
    config = tmp_path / "channels.json"
    config.write_text(json.dumps({"email": {"type": "smtp", "host": "127.0.0.1", "port": 2525, "security": "none",
                                            "sender": "rpm@example.org"}}))
    return config


def test_embedded_bootstrap_uses_the_sqlite_file_for_the_channels(tmp_path: Path) -> None:
    services = bootstrap(Settings.from_env({}, data_dir=tmp_path / "data", channels_config=_smtp_channels(tmp_path)),
                         clock=FixedClock(NOW))
    try:
        assert isinstance(services.send_ledger, SqliteSendLedger)
        assert Path(services.send_ledger.path) == tmp_path / "data" / "sends.db"
        assert services.channels["email"].ledger is services.send_ledger
    finally:
        services.close()


def test_with_a_fhir_server_two_instances_share_their_claims(tmp_path: Path) -> None:
    """Two Function App instances (separate local disks) against one FHIR service: a send one of
    them recorded is a duplicate for the other, which a per-instance SQLite file could not know."""
    backing = SqliteFhirStore(tmp_path / "server.db", clock=FixedClock(NOW))
    with serve_store(backing) as url:
        instances = [bootstrap(Settings.from_env({"VIGIL_FHIR_URL": url}, data_dir=tmp_path / f"instance-{n}",
                                                 channels_config=_smtp_channels(tmp_path)), clock=FixedClock(NOW))
                     for n in (1, 2)]
        try:
            first, second = (s.send_ledger for s in instances)
            assert isinstance(first, FhirSendLedger) and isinstance(second, FhirSendLedger)
            assert all(s.channels["email"].ledger is s.send_ledger for s in instances)
            assert not (tmp_path / "instance-1" / "sends.db").exists()

            assert first.claim("email:m-1", NOW).state == "new"
            assert second.claim("email:m-1", NOW).state == "in-flight"  # the other instance is sending it
            first.mark_sent("email:m-1", "provider-1", NOW)
            claim = second.claim("email:m-1", NOW)
            assert (claim.state, claim.provider_id) == ("sent", "provider-1")
            [basic] = backing.search("Basic", {"identifier": "urn:vigil:send-ledger|email:m-1"}).resources
            assert basic["code"]["coding"][0]["code"] == "send-claim"
        finally:
            for services in instances:
                services.close()
    backing.close()


def test_claims_duplicated_by_a_racing_conditional_create_do_not_wedge_the_key(tmp_path: Path) -> None:
    """Some FHIR servers let two concurrent conditional creates both succeed; afterwards every
    conditional create on that identifier fails ("matched more than one"). The ledger must still
    answer for the key, from its most advanced claim."""
    store = SqliteFhirStore(tmp_path / "fhir.db", clock=FixedClock(NOW))
    ledger = FhirSendLedger(store)
    assert ledger.claim("sms:m-2", NOW).state == "new"
    [first] = store.search("Basic", {"identifier": "urn:vigil:send-ledger|sms:m-2"}).resources
    twin = {k: v for k, v in first.items() if k not in ("id", "meta")}
    store.create(twin)  # what the losing side of the race wrote (a plain create)
    ledger.mark_sent("sms:m-2", "provider-2", NOW)

    claim = ledger.claim("sms:m-2", NOW)
    assert (claim.state, claim.provider_id) == ("sent", "provider-2")
    lookup = ledger.lookup("sms:m-2")
    assert lookup is not None and lookup.state == "sent"
    store.close()
