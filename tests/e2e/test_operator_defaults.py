"""Operator defaults on a fresh data directory: the clinic phone is required and quoted, rules that
escalate through an unknown chain are refused, extra rules directories add to the shipped library,
and acknowledgement links follow the served address."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from runtime.cli import DEMO_CLINIC_PHONE, main
from runtime.settings import Settings

UNKNOWN_CHAIN_RULESET = """\
ruleset: ward-extra
title: Extra ward rules
version: 1
program:
  id: ward-extra
  title: Ward extra
  canonical: [urn:vigil:program:ward-extra]
rules:
  - id: ward-hr-very-high
    title: Heart rate very high
    severity: high
    when:
      reading: heart_rate >= 150
    actions: {notify: [care-team], escalate: no-such-chain}
"""


def _ruleset_dir(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "extra-rules"
    folder.mkdir()
    (folder / "ward.yaml").write_text(text)
    return folder


def test_commands_that_send_refuse_to_start_without_the_clinic_phone(data_dir: Path, tmp_path: Path,
                                                                      monkeypatch, capsys) -> None:
    monkeypatch.delenv("VIGIL_CONTACT_PHONE", raising=False)
    messages = tmp_path / "in.jsonl"
    messages.write_text("")
    assert main(["--data-dir", str(data_dir), "ingest", str(messages)]) == 2
    err = capsys.readouterr().err
    assert "VIGIL_CONTACT_PHONE is required" in err and "Traceback" not in err
    assert main(["--data-dir", str(data_dir), "dead-letters", "replay"]) == 2
    assert "VIGIL_CONTACT_PHONE" in capsys.readouterr().err
    # Only a data directory `vigil demo` wrote (it leaves the demo-as-of marker) serves with the
    # demo's fictional phone; any other refuses.
    assert main(["--data-dir", str(data_dir), "serve", "--port", "0"]) == 2
    assert "VIGIL_CONTACT_PHONE is required" in capsys.readouterr().err


def test_demo_texts_quote_the_clinic_phone_and_have_no_empty_slot(data_dir: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("VIGIL_CONTACT_PHONE", raising=False)
    assert main(["--data-dir", str(data_dir), "demo", "--patients", "12", "--days", "6"]) == 0
    capsys.readouterr()
    bodies = [json.loads(p.read_text()) for p in (data_dir / "outbox").glob("*.json")]
    texts = [m.get("body") or m.get("text") or "" for m in bodies]
    assert texts and all(texts)
    calling = [t for t in texts if re.search(r"\bcall\b", t, re.I)]
    assert calling, "the demo sends patients 'please call us' messages"
    for text in texts:
        # An empty slot reads "call us at ." or "call us at when you can".
        assert not re.search(r"\bat\s*[.,;!]|\bat\s+when\b|\bat\s*$", text), text
    assert all(DEMO_CLINIC_PHONE in t for t in calling if "call us" in t.lower())


def test_rules_that_escalate_through_an_unknown_chain_are_an_error(tmp_path: Path, data_dir: Path,
                                                                   monkeypatch, capsys) -> None:
    folder = _ruleset_dir(tmp_path, UNKNOWN_CHAIN_RULESET)
    assert main(["--data-dir", str(data_dir), "rules", "validate", str(folder)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"ward\.yaml:14:\d+: rules\[0\]\.actions\.escalate: unknown escalation chain 'no-such-chain'", out)
    assert "crisis" in out  # the valid chains are named

    from rules.loader import RuleLoadError
    from runtime.bootstrap import bootstrap

    with pytest.raises(RuleLoadError, match="no-such-chain"):
        bootstrap(Settings.from_env({"VIGIL_RULES_PATH": str(folder)}, data_dir=data_dir))


def test_rules_path_directories_add_to_the_shipped_library(tmp_path: Path, data_dir: Path, capsys) -> None:
    from runtime.bootstrap import bootstrap

    folder = _ruleset_dir(tmp_path, UNKNOWN_CHAIN_RULESET.replace("escalate: no-such-chain", "escalate: crisis"))
    services = bootstrap(Settings.from_env({"VIGIL_RULES_PATH": str(folder)}, data_dir=data_dir))
    try:
        ids = {rs.ruleset for rs in services.rulesets}
    finally:
        services.close()
    assert {"ward-extra", "hypertension", "heart-failure"} <= ids


def test_ack_links_point_at_the_served_port(data_dir: Path) -> None:
    from runtime.bootstrap import bootstrap, messaging

    services = bootstrap(Settings.from_env({}, data_dir=data_dir, http_port=8123))
    try:
        assert messaging(services).public_base_url == "http://127.0.0.1:8123"
    finally:
        services.close()


def _sends_after_serving(data_dir: Path, *, catch_up: bool) -> Counter[str]:
    """The templates of the outbox files a `vigil serve` on `data_dir` adds once every sweep ran."""
    from runtime.bootstrap import bootstrap
    from runtime.cli import serve_clock
    from runtime.host import LocalHost

    settings = Settings.from_env({}, data_dir=data_dir)
    services = bootstrap(settings, clock=serve_clock(settings, catch_up=catch_up))
    host = LocalHost(services)
    host.acquire()
    try:
        before = set((data_dir / "outbox").glob("*.json"))
        for spec in host.of_kind("timerTrigger"):
            host.run_timer(spec.name)
        host.run_until_idle(timeout_s=120)
        for spec in host.of_kind("timerTrigger"):  # second round: what the first one scheduled
            host.run_timer(spec.name)
        host.run_until_idle(timeout_s=120)
        new = set((data_dir / "outbox").glob("*.json")) - before
        return Counter(json.loads(p.read_text())["tags"]["template"] for p in new)
    finally:
        host.release()
        services.close()


def test_serve_on_the_demo_data_sends_nothing_for_its_past_unless_asked_to_catch_up(tmp_path: Path, capsys) -> None:
    import shutil

    demo = tmp_path / "demo"
    assert main(["--data-dir", str(demo), "demo", "--patients", "12", "--days", "6"]) == 0
    capsys.readouterr()
    catch_up = tmp_path / "catch-up"
    shutil.copytree(demo, catch_up)
    resumed = _sends_after_serving(demo, catch_up=False)
    # Resumed at the demo's as-of time, only today's reading reminders are due: no escalation step
    # and no alert of the demo's past goes out.
    assert set(resumed) <= {"reminder_reading", "reminder_questionnaire"}, resumed
    # On the wall clock (weeks past the demo) the past comes due at once: absence alerts, escalations.
    caught_up = _sends_after_serving(catch_up, catch_up=True)
    assert sum(n for t, n in caught_up.items() if not t.startswith("reminder")) > 0, caught_up


def test_a_host_resumed_on_demo_time_takes_messages_another_process_published(tmp_path: Path, capsys) -> None:
    """`vigil ingest` beside a `vigil serve` that runs on a demo's resumed clock: the bus times
    deliveries on the wall clock, so the host sees the messages now, not weeks later."""
    from runtime.bootstrap import bootstrap
    from runtime.cli import serve_clock
    from runtime.host import LocalHost

    demo = tmp_path / "demo"
    assert main(["--data-dir", str(demo), "demo", "--patients", "4", "--days", "3"]) == 0
    capsys.readouterr()
    settings = Settings.from_env({}, data_dir=demo)
    served = bootstrap(settings, clock=serve_clock(settings, catch_up=False))
    publisher = bootstrap(settings)  # a second process on the system clock
    host = LocalHost(served)
    host.acquire()
    try:
        message = (b'{"deviceId": "demo-001-cuff", "type": "heart_rate", "time": "'
                   + served.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ").encode() + b'", "values": {"bpm": 70}}')
        LocalHost(publisher).publish_device_messages([message])
        assert host.run_until_idle(timeout_s=30)
        assert served.bus is not None and served.bus.pending(host.device_queue) == 0
    finally:
        host.release()
        served.close()
        publisher.close()
