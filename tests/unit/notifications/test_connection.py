"""Connection strings, secrets and the channel registry: clear errors, no secret ever shown."""

from __future__ import annotations

import pytest

from notifications.channels import ChannelConfigError, build_channels
from notifications.channels.ledger import MemorySendLedger
from notifications.connection import ConnectionStringError, Secret, parse_acs_connection_string

KEY = "c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldC1rZXk="  # base64, with '=' padding


def test_scheme_and_port_are_kept_and_the_trailing_slash_dropped() -> None:
    conn = parse_acs_connection_string(f"endpoint=https://127.0.0.1:8443/;accesskey={KEY}")
    assert conn.endpoint == "https://127.0.0.1:8443" and conn.access_key.reveal() == KEY
    assert parse_acs_connection_string(f"AccessKey={KEY};Endpoint=http://localhost:9000").endpoint == "http://localhost:9000"
    assert parse_acs_connection_string(f"endpoint=acme.communication.azure.com;accesskey={KEY}").endpoint == \
        "https://acme.communication.azure.com"


@pytest.mark.parametrize("text,message", [
    ("", "empty"),
    (f"accesskey={KEY}", "no endpoint"),
    ("endpoint=https://x.communication.azure.com/", "no accesskey"),
    ("endpoint=https://x.communication.azure.com/;accesskey=not base64!!", "not valid base64"),
    (f"endpoint=http://acme.communication.azure.com/;accesskey={KEY}", "plain http"),
    (f"endpoint=ftp://x/;accesskey={KEY}", "http or https"),
    (f"endpoint=https://x/;accesskey={KEY};accesskey={KEY}", "twice"),
    ("endpoint=https://x/;s3cr3tKeyWithoutName", "not 'name=value'"),
    (f"endpoint=https://x/;acesskey={KEY}", "neither 'endpoint' nor 'accesskey'"),
])
def test_bad_connection_strings_say_why_without_the_key(text, message) -> None:
    with pytest.raises(ConnectionStringError) as err:
        parse_acs_connection_string(text)
    assert message in str(err.value)
    for secret in (KEY, "not base64!!", "s3cr3tKeyWithoutName"):
        assert secret not in str(err.value)


def test_secrets_do_not_print() -> None:
    conn = parse_acs_connection_string(f"endpoint=https://x.communication.azure.com;accesskey={KEY}")
    for text in (repr(conn), str(conn), repr(conn.access_key), str(conn.access_key), f"{conn.access_key}"):
        assert KEY not in text
    assert Secret("a") == Secret("a") and not Secret("")


def test_registry_builds_channels_and_names_bad_entries() -> None:
    channels = build_channels(
        {"sms": {"type": "acs_sms", "connection_string": f"endpoint=https://x.communication.azure.com;accesskey={KEY}",
                 "from": "+18005550100"},
         "email": {"type": "acs_email", "connection_string": Secret(f"endpoint=https://x.communication.azure.com;"
                                                                    f"accesskey={KEY}"),
                   "sender": "DoNotReply@mail.example.org"},
         "files": {"type": "outbox", "directory": "out"}},
        ledger=MemorySendLedger())
    assert {name: ch.name for name, ch in channels.items()} == {"sms": "sms", "email": "email", "files": "files"}
    assert KEY not in repr(channels["sms"]) and KEY not in repr(channels["email"])


@pytest.mark.parametrize("config,message", [
    ({"s": {"type": "carrier-pigeon"}}, "channel 's': unknown type 'carrier-pigeon'"),
    ({"s": {"type": "acs_sms", "from": "+18005550100"}}, "channel 's': 'connection_string' is required"),
    ({"s": {"type": "acs_sms", "connection_string": f"endpoint=https://x;accesskey={KEY}", "from": "+18005550100",
            "conection_verify": False}}, "unknown setting(s) conection_verify"),
    ({"s": {"type": "acs_sms", "connection_string": "endpoint=https://x;accesskey=%%%", "from": "+18005550100"}},
     "channel 's': connection_string: the ACS access key is not valid base64"),
    ({"s": {"type": "acs_sms", "connection_string": f"endpoint=https://x;accesskey={KEY}", "from": "0800 FLOWERS"}},
     "channel 's'"),
    ({"m": {"type": "smtp", "host": "relay", "sender": "a@b.example", "port": "smtp"}}, "'port' must be a number"),
])
def test_registry_errors(config, message) -> None:
    with pytest.raises(ChannelConfigError) as err:
        build_channels(config, ledger=MemorySendLedger())
    assert message in str(err.value) and KEY not in str(err.value)


def test_non_idempotent_channels_need_a_ledger() -> None:
    with pytest.raises(ChannelConfigError, match="send ledger"):
        build_channels({"s": {"type": "acs_sms", "connection_string": f"endpoint=https://x;accesskey={KEY}",
                              "from": "+18005550100"}})
