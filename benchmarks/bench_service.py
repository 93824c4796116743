"""The xnai-core service watching N HTTP services: schedule lag, CPU, memory, payload sizes.

Run: ``.venv/bin/python -m benchmarks.bench_service [--services 500] [--interval 1]
[--warmup 30] [--duration 300]``

``xnai-core serve`` runs as a subprocess (as operators run it) with a config of N ``http``
services, all answered by one keep-alive server in a process of its own (the server of
``bench_health``), so neither's CPU is billed to the other. Measured over the window:

- schedule lag: how late each check started behind its due time (the previous check's
  start plus its response time plus the interval: the monitor's fixed-delay rule), read
  from the results the service itself recorded (``/api/state`` histories);
- CPU of the service process as a share of one core, and the machine's load;
- resident memory (RSS) after the warm-up and at the end;
- the dashboard's payloads: the page (HTML, script and style) and one ``/api/state``
  poll, raw and gzip-compressed, and the time the service took to answer a poll.

Numbers on a shared machine are noisy: read the load column beside them.
"""

from __future__ import annotations

import argparse
import gzip
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.bench_health import (
    cpu_seconds,
    free_port,
    machine_busy_seconds,
    percentile,
    rss_bytes,
    wait_for_port,
)

REPO = Path(__file__).resolve().parent.parent


def write_config(folder: Path, services: int, interval: float, target_port: int) -> Path:
    lines = [f"[monitor]\ncheck_interval = {interval:g}\n"]
    for index in range(services):
        lines.append(
            f'[[services]]\nname = "svc{index:04d}"\ntype = "http"\n'
            f'url = "http://127.0.0.1:{target_port}/s{index}"\ntimeout = {interval * 0.9:g}\n'
        )
    path = folder / "bench.toml"
    path.write_text("\n".join(lines))
    return path


def lags_ms(state: dict[str, Any], interval: float, since: float) -> list[float]:
    found = []
    for service in state["services"]:
        starts, times = service["started_at"], service["times_ms"]
        for i in range(1, len(starts)):
            if starts[i] < since:
                continue
            due = starts[i - 1] + times[i - 1] / 1000 + interval
            found.append(max(0.0, starts[i] - due) * 1000)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--services", type=int, default=500)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--warmup", type=float, default=30.0)
    parser.add_argument("--duration", type=float, default=300.0)
    args = parser.parse_args(argv)

    target_port = free_port()
    target = subprocess.Popen(
        [sys.executable, "-c", f"from benchmarks.bench_health import serve; serve({target_port})"],
        cwd=REPO,
    )
    folder = Path(tempfile.mkdtemp(prefix="xnai-bench-service-"))
    service_port = free_port()
    service = None
    try:
        wait_for_port(target_port, time.monotonic() + 30)
        config = write_config(folder, args.services, args.interval, target_port)
        service = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "xnai-core"),
                "serve",
                "--config",
                str(config),
                "--port",
                str(service_port),
                "--log-level",
                "warning",
            ],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
        )
        wait_for_port(service_port, time.monotonic() + 60)
        url = f"http://127.0.0.1:{service_port}"
        time.sleep(args.warmup)
        load_start = os.getloadavg()
        rss_start = rss_bytes(service.pid)
        cpu_start = cpu_seconds(service.pid)
        busy_start = machine_busy_seconds()
        wall_start = time.monotonic()
        window_start = time.time()
        lags: list[float] = []
        polls: list[float] = []
        state_raw = b""
        # Each history holds the last 60 results: read them every 45 s so none is missed.
        next_read = time.monotonic() + min(45.0, args.duration)
        end = wall_start + args.duration
        while True:
            now = time.monotonic()
            if now >= next_read or now >= end:
                state = httpx.get(url + "/api/state?detail=1", timeout=30).json()
                started = time.perf_counter()
                plain = httpx.get(
                    url + "/api/state", timeout=30, headers={"Accept-Encoding": "identity"}
                )
                polls.append((time.perf_counter() - started) * 1000)
                state_raw = plain.content
                lags.extend(lags_ms(state, args.interval, window_start))
                window_start = time.time()
                next_read = now + 45.0
                if now >= end:
                    break
            time.sleep(min(1.0, max(0.0, min(next_read, end) - time.monotonic())))
        wall = time.monotonic() - wall_start
        cpu = (cpu_seconds(service.pid) - cpu_start) / wall
        load = (machine_busy_seconds() - busy_start) / wall
        load_end = os.getloadavg()
        rss_end = rss_bytes(service.pid)
        page = sum(
            len(httpx.get(url + path, timeout=10).content)
            for path in ("/", "/dashboard.js", "/dashboard.css")
        )
        unhealthy = sum(s["status"] != "healthy" for s in state["services"])
    finally:
        if service is not None:
            service.terminate()
            service.wait(timeout=30)
        target.kill()
        target.wait(timeout=10)

    mib = 1024 * 1024
    print(
        f"xnai-core serve watching {args.services} HTTP services every {args.interval:g} s, "
        f"{wall:.0f} s window after {args.warmup:.0f} s warm-up"
    )
    print("| measure | value |")
    print("|---|---|")
    print(f"| checks measured | {len(lags)} |")
    print(
        f"| schedule lag p50 / p99 / max | {percentile(lags, 0.5):.1f} / "
        f"{percentile(lags, 0.99):.1f} / {max(lags, default=float('nan')):.1f} ms |"
    )
    print(f"| service CPU (share of one core) | {cpu * 100:.1f} % |")
    print(f"| machine load (cores busy, all processes) | {load:.2f} of {os.cpu_count()} |")
    print(
        "| load average 1/5/15 min, at the start / at the end | "
        + " / ".join(f"{a:.2f} {b:.2f} {c:.2f}" for a, b, c in (load_start, load_end))
        + " |"
    )
    print(f"| RSS after warm-up / at the end | {rss_start / mib:.1f} / {rss_end / mib:.1f} MiB |")
    print(f"| services not healthy at the end | {unhealthy} |")
    print(f"| dashboard page (HTML + JS + CSS) | {page / 1024:.1f} KiB |")
    print(
        f"| one /api/state poll, raw / gzip | {len(state_raw) / 1024:.1f} / "
        f"{len(gzip.compress(state_raw)) / 1024:.1f} KiB |"
    )
    print(f"| /api/state answer time, median of {len(polls)} | {percentile(polls, 0.5):.0f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
