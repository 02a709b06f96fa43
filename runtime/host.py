"""The local Functions host: runs function_app.py's own functions from local sources.

It reads the functions registered on the app and their trigger bindings, and feeds each one the
way the Azure Functions host would, building the same `azure.functions` binding objects:
  eventHubTrigger  <- the local bus queue "eh:<event hub name>" (batches for cardinality many)
  eventGridTrigger <- the embedded FHIR store's event outbox, relayed to "eg:<function name>"
  timerTrigger     <- a scheduler honouring the 6-field NCRONTAB schedule (seconds first)
  httpTrigger      <- runtime.http_server's ASGI app (routes /api/<route>, served by hypercorn)
A failed invocation is retried by the bus with backoff and dead-lettered after the last attempt.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.functions.timer import TimerRequest

from common.storage import describe as storage_fault
from handlers.fhir_events import HANDLED_TYPES
from runtime.bootstrap import WORKFLOW_EVENTS, Services, install
from runtime.bus import Lease, Partitions
from runtime.host_functions import (
    FunctionSpec,
    event_grid_event,
    event_hub_event,
    function_spec,
    registered_functions,
)

log = logging.getLogger(__name__)

# Event Grid functions subscribed to the FHIR store's events, each with the resource types it acts
# on (the local analogue of an Event Grid subscription on the Health Data Services topic, filtered
# by subject the way an advanced filter would). Events of other types (the episode's own
# DetectedIssues, Tasks, Communications) are not relayed: no subscriber reads them.
# Other Event Grid functions (Communication Services events) are fed from their own queue,
# `eg:<function name>`.
FHIR_EVENT_SUBSCRIBERS: dict[str, frozenset[str]] = {"on_fhir_event": HANDLED_TYPES}


@dataclass
class HostStats:
    invocations: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    relayed_events: int = 0

    def count(self, name: str, ok: bool) -> None:
        target = self.invocations if ok else self.failures
        target[name] = target.get(name, 0) + 1


class HostAlreadyRunning(RuntimeError):
    pass


def device_partition_key(body: bytes) -> str | None:
    """The device id of a device message, read cheaply, so each device's readings share a
    partition as on Event Hubs (docs/decisions.md, "Worker processes"); None if it names none
    (the bus then partitions by message id)."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return None  # a malformed (or absurdly nested) message is the ingest handler's to dead-letter, with the reason
    if not isinstance(message, dict):
        return None
    for name in ("deviceId", "device_id", "serial", "patientId"):
        value = message.get(name)
        if isinstance(value, str | int) and not isinstance(value, bool):
            key = str(value)
            try:
                key.encode()
            except UnicodeEncodeError:
                return None  # a lone surrogate (valid JSON, not text SQLite can store): by message id
            return key
    return None


class LocalHost:
    def __init__(self, services: Services, app: func.FunctionApp | None = None, *, batch_size: int = 100,
                 partitions: Partitions | None = None, relay: bool = True, relay_grace_s: float = 0.0) -> None:
        """`partitions` (k, N): this host takes only those partitions of every queue (a worker
        process, runtime.supervisor); `relay`: it also relays the store's outbox and runs the
        timers (exactly one host on a data dir does); `relay_grace_s`: an outbox event is relayed
        only once it has been pending that long, leaving the worker that wrote it time to
        evaluate it in process (handlers.in_process) instead of evaluating it twice."""
        if services.bus is None:
            raise ValueError("the local host needs the local bus (embedded settings)")
        self.services = services
        self.bus = services.bus
        self.batch_size = batch_size
        self.partitions = partitions
        self.relay = relay
        self.relay_grace_s = relay_grace_s
        self._first_pending: dict[int, float] = {}  # outbox seq -> when this host first saw it
        self.stats = HostStats()
        self._lock_file: Any = None
        self._last_error = ""
        self._retry_in: float | None = None
        self._last_trim = 0.0
        if app is None:
            import function_app

            app = function_app.app
        self.functions = [function_spec(f, self._resolve) for f in registered_functions(app)]
        install(services)

    def _resolve(self, value: str) -> str:
        """Binding expressions like %VIGIL_EVENT_HUB_NAME% come from app settings."""
        def lookup(m: re.Match[str]) -> str:
            name = m.group(1)
            if name == "VIGIL_EVENT_HUB_NAME":
                return self.services.settings.event_hub_name
            return os.environ.get(name, name)

        return re.sub(r"%([^%]+)%", lookup, value)

    def of_kind(self, kind: str) -> list[FunctionSpec]:
        """The enabled functions of a trigger kind (a disabled one's input waits on its queue)."""
        return [f for f in self.functions if f.trigger == kind and not f.disabled]

    @property
    def device_queue(self) -> str:
        hubs = self.of_kind("eventHubTrigger")
        return hubs[0].source if hubs else "eh:" + self.services.settings.event_hub_name

    # -- lifecycle ---------------------------------------------------------------------------
    def acquire(self) -> None:
        """Claim the data directory: one host per data dir. Leases of a host that died are
        released at once instead of waiting out their visibility timeout."""
        path = Path(self.services.settings.data_dir) / "host.lock"
        # Created 0600 like every file of the data directory; held open for the host's lifetime.
        self._lock_file = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise HostAlreadyRunning(f"another Vigil host is running on {path.parent}") from None
        self._lock_file.write(str(os.getpid()))
        self._lock_file.flush()
        self.release_leases()

    def release_leases(self) -> int:
        """Make the leases of this host's partitions visible now: a predecessor on them died
        holding them (the caller owns those partitions alone: the data-dir lock, or the supervisor
        that starts one worker per partition set)."""
        released = self.bus.release_all_leases(self.partitions)
        if released:
            log.info("released %d message leases left by a previous host", released)
        return released

    def release(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    # -- input -------------------------------------------------------------------------------
    def publish_device_messages(self, bodies: Iterable[bytes], *, partition_key: str | None = None) -> int:
        """Enqueue device messages, each partitioned by `partition_key` or else its own device id."""
        return self.bus.publish_many(
            self.device_queue, ((b, None, partition_key or device_partition_key(b), None) for b in bodies))

    # -- the pump ----------------------------------------------------------------------------
    def run_once(self) -> int:
        """One round over every source. Returns how many items were handled."""
        done = self.relay_fhir_events() if self.relay else 0
        for spec in self.of_kind("eventHubTrigger"):
            done += self._run_event_hub(spec)
        for spec in self.of_kind("eventGridTrigger"):
            done += self._run_event_grid(spec)
        if not self.relay:
            return done
        done += self.run_due_timers()
        if time.monotonic() - self._last_trim > 60:
            self._last_trim = time.monotonic()
            keep_s = self.services.settings.retention_s("bus")
            if keep_s is not None:
                self.bus.trim(WORKFLOW_EVENTS, older_than_s=keep_s)
        return done

    def run_until_idle(self, *, timeout_s: float = 600.0, on_progress: Callable[[], None] | None = None) -> bool:
        """Pump until no source has visible work. False if the timeout came first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            handled = self.run_once()
            if on_progress is not None:
                on_progress()
            if handled == 0:
                if (self.relay and self.pending_store_events()) or any(
                    self.bus.next_visible_in(s.source, self.partitions) == 0
                    for s in self.functions if s.source and not s.disabled
                ):
                    continue
                waits = [w for s in self.functions if s.source and not s.disabled
                         and (w := self.bus.next_visible_in(s.source, self.partitions)) is not None]
                if not waits:
                    return True
                time.sleep(min(min(waits), 0.5))
        return False

    def serve_forever(self, stop: threading.Event, *, idle_sleep_s: float = 0.05) -> None:
        while not stop.is_set():
            try:
                handled = self.run_once()
            except Exception as exc:  # keep the host alive; the failure is logged
                if storage_fault(exc) is not None:
                    raise  # a full disk or a corrupt file is not a passing failure: stop, say which
                # The type and where, not the message: a library's message can quote a value it
                # was handed (a reading, a phone number), as in _invoke.
                where = "".join(traceback.format_tb(exc.__traceback__, limit=-3)).strip()
                log.error("local host round failed: %s\n%s", type(exc).__name__, where)
                handled = 0
            if handled == 0:
                stop.wait(idle_sleep_s)

    def pending_store_events(self) -> int:
        """FHIR events committed by the store and not yet relayed to the Event Grid functions."""
        outbox = self.services.outbox
        return outbox.outbox_size() if outbox is not None else 0

    # -- event grid: relay the store's outbox to each subscribed function -----------------------
    def relay_fhir_events(self, limit: int = 500) -> int:
        outbox = self.services.outbox
        if outbox is None:
            return 0
        rows = outbox.outbox_pending(limit)
        if self.relay_grace_s > 0:
            rows = self._past_grace(rows)
        if not rows:
            return 0
        relayed = 0
        for spec in self.of_kind("eventGridTrigger"):
            wanted = FHIR_EVENT_SUBSCRIBERS.get(spec.name)
            if wanted is None:
                continue
            events = [event for _, event in rows if (event.get("data") or {}).get("resourceType") in wanted]
            relayed += len(events)
            self.bus.publish_many(
                spec.source, ((json.dumps(event).encode(), event["id"], event.get("subject"), None) for event in events)
            )
        outbox.outbox_done([seq for seq, _ in rows])
        self.stats.relayed_events += relayed
        return len(rows)

    def _past_grace(self, rows: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, dict[str, Any]]]:
        """The rows pending for `relay_grace_s` since this host first saw them. A seq no longer
        pending was settled by the worker that wrote it and is forgotten."""
        now = time.monotonic()
        seen = {seq: self._first_pending.get(seq, now) for seq, _ in rows}
        self._first_pending = seen
        return [(seq, event) for seq, event in rows if now - seen[seq] >= self.relay_grace_s]

    def _receive(self, spec: FunctionSpec) -> list[Lease]:
        return self.bus.receive(spec.source, max_messages=self.batch_size, partitions=self.partitions,
                                visibility_timeout_s=self.services.settings.bus_visibility_timeout_s)

    def _run_event_grid(self, spec: FunctionSpec) -> int:
        leases = self._receive(spec)
        done = []
        for lease in leases:
            try:
                arg = event_grid_event(json.loads(lease.body))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                # Not an event the host can even hand to the function: count it as a failed
                # delivery so it reaches the dead-letter store instead of blocking the queue.
                self.bus.fail(lease, f"undeliverable event: {type(exc).__name__}")
                continue
            if self._invoke(spec, lease_list=[lease], arg=arg, settle=False):
                done.append(lease)
            else:
                self.bus.fail(lease, self._last_error, delay_s=self._retry_in)
        self.bus.ack(done)  # one transaction for the round, not one per event
        return len(leases)

    # -- event hubs --------------------------------------------------------------------------
    def _run_event_hub(self, spec: FunctionSpec) -> int:
        leases = self._receive(spec)
        if not leases:
            return 0
        many = str(getattr(spec.binding.get("cardinality"), "value", spec.binding.get("cardinality"))) == "many"
        if many and len(leases) == 1:
            self._invoke(spec, lease_list=leases, arg=[event_hub_event(leases[0])])
        elif many:
            if not self._invoke(spec, lease_list=leases, arg=[event_hub_event(x) for x in leases], settle=False):
                # Find the poison message: retry one by one so good messages are not held back.
                for lease in leases:
                    self._invoke(spec, lease_list=[lease], arg=[event_hub_event(lease)])
            else:
                self.bus.ack(leases)
        else:
            for lease in leases:
                self._invoke(spec, lease_list=[lease], arg=event_hub_event(lease))
        return len(leases)

    # -- timers ------------------------------------------------------------------------------
    def run_due_timers(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        ran = 0
        for spec in self.of_kind("timerTrigger"):
            assert spec.cron is not None
            if now < spec.next_run:
                continue
            past_due = spec.next_run > 0 and now - spec.next_run > 60
            self._invoke(spec, lease_list=[], arg=TimerRequest(past_due=past_due))
            while spec.next_run <= now:
                spec.next_run = spec.cron.get_next(float)
            ran += 1
        return ran

    def run_timer(self, name: str) -> None:
        """Invoke one timer function now, whatever its schedule (tests, simulations, operators)."""
        # Disabled or not: the Functions host too lets an operator run a disabled function by hand.
        spec = next((s for s in self.functions if s.trigger == "timerTrigger" and s.name == name), None)
        if spec is None:
            raise KeyError(f"no timer function named {name!r}")
        self._invoke(spec, lease_list=[], arg=TimerRequest(past_due=False))

    # -- invocation --------------------------------------------------------------------------
    def _invoke(self, spec: FunctionSpec, *, lease_list: list[Lease], arg: Any, settle: bool = True) -> bool:
        try:
            spec.call(**{spec.arg_name: arg})
        except Exception as exc:
            if lease_list and storage_fault(exc) is not None:
                # Vigil's own storage failed (full disk, read-only, corrupt file): the input is not
                # at fault, so it must not use up its attempts and end as a dead letter (which could
                # not be written either). Stop here; the lease is released when a host starts again.
                raise
            self.stats.count(spec.name, ok=False)
            # Type and message only: handlers keep values out of exception messages.
            # The dead letter keeps the message (an operator's record, next to the payload); the log
            # keeps the type only, since messages of outside libraries can quote values.
            error = f"{type(exc).__name__}: {exc}"
            self._last_error = error
            # A channel that said when to try again (backoff, Retry-After) is retried then, not
            # at the bus's faster pace that would use up the attempts inside the wait.
            retry_at = getattr(exc, "retry_at", None)
            self._retry_in = max(0.0, (retry_at - self.services.clock.now()).total_seconds()) if retry_at else None
            log.warning("function %s failed: %s", spec.name, type(exc).__name__)
            if settle:
                for lease in lease_list:
                    self.bus.fail(lease, error, delay_s=self._retry_in)
            return False
        self.stats.count(spec.name, ok=True)
        if settle and lease_list:
            self.bus.ack(lease_list)
        return True

    def http_functions(self) -> list[FunctionSpec]:
        return self.of_kind("httpTrigger")


