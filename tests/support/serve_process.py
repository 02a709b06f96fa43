"""`vigil serve` in a child process, as an operator starts it: the URL from its first line, SIGTERM
to stop it, and how it stopped."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[str]
    code: int | None = None  # the exit status, once stopped
    stop_s: float = 0.0  # from SIGTERM to exit


@contextmanager
def serve(env: dict[str, str]) -> Iterator[Served]:
    """Start `vigil serve` with `env` (it should listen on port 0) and yield once it prints its
    address; stopped with SIGTERM on leaving. Fails with the first line it printed when that names
    no address (a refusal to start, say)."""
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "serve"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    served = Served("", proc)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        m = re.search(r"on (http://127\.0\.0\.1:\d+)", first)
        assert m, first
        served.url = m.group(1)
        yield served
    finally:
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        served.code = proc.wait(timeout=30)
        served.stop_s = time.monotonic() - start
