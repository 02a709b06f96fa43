"""`vigil serve --workers N`: N worker processes pumping one data directory, and their supervisor.

The supervisor is the `vigil serve` process: it holds the data-dir lock (`LocalHost.acquire`) and
serves HTTP; it pumps nothing itself. Each worker is a `LocalHost` over the same data dir, started
with multiprocessing's spawn method (a fresh interpreter: no SQLite connection or lock crosses a
fork), taking partitions k of N of every bus queue and evaluating in process what it ingests.
Worker 0 alone relays the store's outbox, runs the timers and trims the bus (docs/decisions.md,
"Worker processes").

A worker that dies is started again on the same partitions; it first releases the leases its
predecessor held, so what that one was handling is delivered again at once, and the deterministic
keys and the send ledger keep it from being stored or sent twice. Stopping the supervisor sends
each worker SIGTERM; a worker finishes its round and closes its files.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

from common.clock import Clock
from runtime.settings import Settings

if TYPE_CHECKING:
    from runtime.bootstrap import Services
    from runtime.host import LocalHost

log = logging.getLogger(__name__)

# How long an outbox event waits before worker 0 relays it, when several workers ingest: the worker
# that wrote it evaluates it in process and settles it well within this (handlers.in_process), so
# the relay only delivers what a failed or crashed evaluation left (and nothing is evaluated twice).
RELAY_GRACE_S = 5.0

WorkerTarget = Callable[[Settings, int, int, "Clock | None"], None]


def run_worker(settings: Settings, index: int, count: int, clock: Clock | None) -> None:
    """One worker process: partitions `index` of `count`, until SIGTERM, on the supervisor's clock
    (pickled: a resumed demo clock keeps the supervisor's offset, also in a restarted worker)."""
    from runtime.bootstrap import bootstrap

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which stops us
    services = bootstrap(settings, clock=clock)
    host = worker_host(services, index, count)
    host.release_leases()
    try:
        host.serve_forever(stop)
    finally:
        services.close()


def worker_host(services: Services, index: int, count: int) -> LocalHost:
    """The `LocalHost` of worker `index` of `count`."""
    from runtime.host import LocalHost

    return LocalHost(services, partitions=(index, count), relay=index == 0,
                     relay_grace_s=RELAY_GRACE_S if count > 1 else 0.0)


@dataclass
class Supervisor:
    """Starts `count` workers, restarts one that dies, stops them all. The caller holds the
    data-dir lock for as long as the supervisor runs."""

    settings: Settings
    count: int
    clock: Clock | None = None  # None: each worker's own default (bootstrap's)
    target: WorkerTarget = run_worker
    restart_delay_s: float = 1.0
    restarts: int = 0
    _procs: list[BaseProcess | None] = field(default_factory=list)
    _stopping: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.count <= 32:
            raise ValueError(f"workers must be between 1 and 32, not {self.count}")
        self._ctx = multiprocessing.get_context("spawn")
        self._procs = [None] * self.count

    def _start(self, index: int) -> None:
        proc = self._ctx.Process(target=self.target, name=f"vigil-worker-{index}",
                                 args=(self.settings, index, self.count, self.clock), daemon=False)
        proc.start()
        self._procs[index] = proc

    def start(self) -> None:
        for index in range(self.count):
            self._start(index)

    @property
    def pids(self) -> list[int | None]:
        return [p.pid if p is not None else None for p in self._procs]

    def check(self) -> int:
        """Start again every worker that has exited; returns how many."""
        restarted = 0
        for index, proc in enumerate(self._procs):
            if self._stopping or proc is None or proc.is_alive():
                continue
            log.warning("worker %d exited with code %s: starting it again", index, proc.exitcode)
            proc.close()
            self._start(index)
            restarted += 1
        self.restarts += restarted
        return restarted

    def run(self, stop: threading.Event, *, poll_s: float = 0.5) -> None:
        """Supervise until `stop` is set, then stop the workers."""
        try:
            while not stop.wait(poll_s):
                if self.check():
                    # A worker failing at start (a corrupt file, a full disk) is not restarted in a tight loop.
                    stop.wait(self.restart_delay_s)
        finally:
            self.stop()

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM each worker and wait for it; one still running after `timeout_s` is killed (its
        leases are released when a host next starts on the data dir)."""
        self._stopping = True
        live = [p for p in self._procs if p is not None and p.is_alive()]
        for proc in live:
            proc.terminate()
        deadline = time.monotonic() + timeout_s
        for proc in live:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("worker %s did not stop in %.0f s: killing it", proc.name, timeout_s)
                proc.kill()
                proc.join()
