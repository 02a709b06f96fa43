"""`vigil serve --workers 2` as it runs: a supervisor holding the data-dir lock and two real worker
processes (spawned, each a LocalHost on its bus partitions) over one data directory, fed readings
of many patients, alerting ones among them, and two devices of one patient at once (which the bus
puts on different workers). Every reading is stored once, each patient and rule has one episode,
each message key one Communication, and no message reaches the provider twice — also when a
worker is SIGKILLed mid-run and started again."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from common.clock import Clock, FixedClock
from fhirstore.paging import search_all
from runtime.bootstrap import WORKFLOW_EVENTS, Services, bootstrap
from runtime.bus import partition_of
from runtime.cohort import device
from runtime.host import LocalHost
from runtime.settings import Settings
from runtime.supervisor import Supervisor, run_worker
from tests.support.pipeline import CLINIC_PHONE, DAYTIME, add_patient, reading

CRISIS = {"systolic": 190, "diastolic": 112}
CALM = {"systolic": 124, "diastolic": 78}


def counting_worker(settings: Settings, index: int, count: int, clock: Clock | None) -> None:
    """A worker that also writes down, line by line (a SIGKILL keeps what was written), what its
    outbox provider said of each message it was handed."""
    from notifications.channels.outbox import OutboxProvider

    send = OutboxProvider.send
    log = Path(settings.data_dir).parent / "handed" / f"{os.getpid()}.log"
    log.parent.mkdir(exist_ok=True)

    def counted(self: OutboxProvider, message: Any) -> Any:
        result = send(self, message)
        with log.open("a") as f:
            f.write(json.dumps([message.message_id, result.outcome]) + "\n")
        return result

    OutboxProvider.send = counted  # type: ignore[method-assign]
    run_worker(settings, index, count, clock)


def settings_for(data_dir: Path) -> Settings:
    # A long visibility timeout: the test finishes only if a restarted worker releases the leases
    # its killed predecessor held (instead of waiting them out).
    return Settings.from_env({}, data_dir=data_dir, contact_phone=CLINIC_PHONE, workers=2,
                             bus_visibility_timeout_s=600.0)


def second_device_on_the_other_worker(patient: str) -> str:
    first = partition_of(f"{patient}-dev") % 2
    return next(d for i in range(100) if partition_of(d := f"{patient}-dev{i}") % 2 != first)


def enroll(services: Services, patients: list[str]) -> str:
    for i, pid in enumerate(patients):
        add_patient(services, pid, phone=f"+1555010{i:04d}")
    second = second_device_on_the_other_worker(patients[0])
    services.store.update(device(second, patients[0]))
    return second


def feed(host: LocalHost, patients: list[str], second: str, per_patient: int) -> list[bytes]:
    msgs = []
    for k in range(per_patient):
        when = DAYTIME - timedelta(minutes=5 * (per_patient - k))
        for i, pid in enumerate(patients):
            alerting = i % 3 == 0 and k >= per_patient - 3  # a third of the patients cross a threshold
            msgs.append(reading(pid, "blood_pressure", when.isoformat(), CRISIS if alerting else CALM))
        # Both of the first patient's devices report a crisis at the same moments: two workers at once.
        msgs.append(reading(patients[0], "blood_pressure", (when + timedelta(seconds=30)).isoformat(), CRISIS,
                            device_id=second))
    host.publish_device_messages(msgs)
    return msgs


def settled(host: LocalHost) -> bool:
    queues = {t: n for t, n in host.bus.topics().items() if t != WORKFLOW_EVENTS}
    return not queues and host.pending_store_events() == 0


def wait_settled(host: LocalHost, supervisor: Supervisor, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        supervisor.check()
        if settled(host):
            return
        time.sleep(0.2)
    raise AssertionError(f"not settled in {timeout_s} s: {host.bus.topics()}, outbox {host.pending_store_events()}")


def handed(tmp: Path) -> Counter[tuple[str, str]]:
    lines = [line for p in (tmp / "handed").glob("*.log") for line in p.read_text().splitlines()]
    return Counter(tuple(json.loads(line)) for line in lines)  # type: ignore[misc]


def check_exactly_once(services: Services, tmp: Path, msgs: list[bytes], patients: list[str]) -> None:
    obs = search_all(services.store, "Observation", {"_count": "1000"})
    assert len(obs) == len(msgs)  # every reading stored
    assert {o["meta"]["versionId"] for o in obs} == {"1"}  # and once: no second write of any
    issues = search_all(services.store, "DetectedIssue", {"_count": "1000"})
    episodes = Counter((i["patient"]["reference"], i["code"]["coding"][0]["code"]) for i in issues)
    alerting = {f"Patient/{p}" for i, p in enumerate(patients) if i % 3 == 0}
    assert {p for p, rule in episodes if rule == "htn-crisis"} == alerting
    assert all(n == 1 for n in episodes.values()), episodes  # one episode per patient and rule
    comms = search_all(services.store, "Communication", {"_count": "1000"})
    keys = Counter(c["identifier"][0]["value"] for c in comms)
    assert keys and all(n == 1 for n in keys.values())  # one Communication per message key
    accepted = Counter(mid for (mid, outcome), n in handed(tmp).items() if outcome == "accepted" for _ in range(n))
    assert accepted and all(n == 1 for n in accepted.values())  # the provider accepted each message once
    files = services.channels["outbox"].provider.messages()
    assert {f["message_id"] for f in files} == set(accepted)
    assert len(files) == sum(1 for c in comms if c["status"] == "completed")


def start(tmp: Path, patients: list[str]) -> tuple[Services, LocalHost, str]:
    services = bootstrap(settings_for(tmp / "data"), clock=FixedClock(DAYTIME))
    second = enroll(services, patients)
    host = LocalHost(services)  # the supervisor's: the data-dir lock and the publisher
    host.acquire()
    return services, host, second


def test_two_worker_processes_on_one_data_dir_store_open_and_send_each_once(tmp_path: Path) -> None:
    patients = [f"w{i:02d}" for i in range(24)]
    services, host, second = start(tmp_path, patients)
    supervisor = Supervisor(services.settings, 2, clock=FixedClock(DAYTIME), target=counting_worker)
    supervisor.start()
    try:
        msgs = feed(host, patients, second, per_patient=6)
        wait_settled(host, supervisor)
        assert supervisor.restarts == 0
    finally:
        supervisor.stop()
    assert all(p is not None for p in supervisor.pids)
    check_exactly_once(services, tmp_path, msgs, patients)
    # Both workers did work: the partitions split the patients' devices between them.
    assert len(list((tmp_path / "handed").glob("*.log"))) == 2
    assert not [k for k in handed(tmp_path) if k[1] != "accepted"]  # no second attempt reached the provider
    host.release()
    services.close()


def test_a_worker_killed_mid_run_is_restarted_and_everything_is_processed_exactly_once(tmp_path: Path) -> None:
    patients = [f"k{i:02d}" for i in range(30)]
    services, host, second = start(tmp_path, patients)
    supervisor = Supervisor(services.settings, 2, clock=FixedClock(DAYTIME), target=counting_worker,
                            restart_delay_s=0.1)
    supervisor.start()
    try:
        msgs = feed(host, patients, second, per_patient=12)
        deadline = time.monotonic() + 120
        while (stored := services.store.search("Observation", {"_summary": "count"}).total or 0) < 40:
            assert time.monotonic() < deadline, "the workers stored nothing"
            time.sleep(0.02)
        victim = supervisor.pids[1]
        assert victim is not None
        os.kill(victim, signal.SIGKILL)  # mid-run: it holds leases of its partitions
        assert stored < len(msgs)
        wait_settled(host, supervisor)
        assert supervisor.restarts >= 1
        assert supervisor.pids[1] != victim
    finally:
        supervisor.stop()
    check_exactly_once(services, tmp_path, msgs, patients)
    host.release()
    services.close()
