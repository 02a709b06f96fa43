"""Slow and idle clients against `vigil serve`'s HTTP server. Prints figures; not a test.

    .venv/bin/python bench/http.py [--connections 400] [--idle-timeout 2] [--requests 500] [--json]

Opens N idle half-open connections (half send nothing, half an unfinished request line), then
measures health-check latency while they are open, how long until the server has closed every
one of them, and health-check throughput afterwards. Loopback only; bounded in count and time.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow the
# standard library's `http` package: put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent), *(p for p in sys.path if Path(p or ".").resolve() != _HERE)]

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import httpx  # noqa: E402

from runtime.bootstrap import bootstrap  # noqa: E402
from runtime.host import LocalHost  # noqa: E402
from runtime.http_server import ServerLimits, connection_capacity, running_server  # noqa: E402
from runtime.settings import Settings  # noqa: E402
from tests.support.raw_http import connect, read_until_closed  # noqa: E402


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def _open_idle(url: str, connections: int) -> list:
    socks = []
    for i in range(connections):
        sock = connect(url)
        if i % 2:  # half send nothing, half an unfinished request line
            sock.sendall(b"POST /api/ingest HTTP/1.1\r\n")
        socks.append(sock)
    return socks


def _health_ms(url: str, count: int) -> list[float]:
    latencies = []
    with httpx.Client(timeout=10) as client:
        for _ in range(count):
            start = time.monotonic()
            ok = client.get(f"{url}/api/health").status_code == 200
            latencies.append((time.monotonic() - start) * 1000 if ok else float("inf"))
    return latencies


def run(connections: int, idle_timeout_s: float, requests: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        services = bootstrap(Settings.from_env({}, data_dir=Path(tmp), local_token="bench"))
        host = LocalHost(services)
        try:
            with running_server(host, "bench", limits=ServerLimits(idle_timeout_s=idle_timeout_s)) as url:
                socks = _open_idle(url, connections)
                opened = time.monotonic()
                during = _health_ms(url, 20)
                closed_after, still_open = [], 0
                for sock in socks:
                    left = max(0.01, opened + idle_timeout_s * 3 - time.monotonic())
                    _, closed = read_until_closed(sock, timeout_s=left)
                    if closed:
                        closed_after.append(time.monotonic() - opened)
                    else:
                        still_open += 1
                    sock.close()
                start = time.monotonic()
                latencies = _health_ms(url, requests)
                elapsed = time.monotonic() - start
        finally:
            services.close()
    return {
        "connections": connections,
        "idle_timeout_s": idle_timeout_s,
        "connection_capacity": connection_capacity(),
        "health_while_open_ms_p50": round(statistics.median(during), 2),
        "health_while_open_ms_max": round(max(during), 2),
        "all_closed_after_s": round(max(closed_after), 2) if closed_after else None,
        "still_open_after_3x_timeout": still_open,
        "health_per_s": round(requests / elapsed, 1),
        "health_ms_p99": round(pct(latencies, 99), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=400)
    parser.add_argument("--idle-timeout", type=float, default=2.0)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.connections, args.idle_timeout, args.requests)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:32} {value}")
    return 0 if result["still_open_after_3x_timeout"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
