"""Health monitor at scale: N HTTP checkers at a fixed interval against one local server.

Run: ``.venv/bin/python -m benchmarks.bench_health [--duration 60] [--checkers 500]
[--interval 1] [--baseline]``

The server runs in its own process (so its CPU is not billed to the monitor) and
answers ``200`` on loopback with HTTP/1.1 keep-alive. Each checker is a real
``HTTPHealthChecker`` wrapped by a probe that records when each run starts and
ends (loop clock). Measured:

- schedule lag: how late a run starts behind its due time, the previous run's
  end plus the interval (the monitor's fixed-delay rule; the first, jittered run
  of each checker has no due time and is left out);
- overlapping runs: a run starting while the same checker's previous run is
  still in flight (must be 0);
- CPU of the monitor process (and, apart, of the server process), as a share of
  one core over the run;
- resident memory (RSS) after warm-up and at the end, with samples between. The
  warm-up lasts until every checker's bounded history is full (``--history``,
  default the monitor's own ``history_size`` default, 100 results, so "flat"
  covers what a default monitor keeps; each kept result is ~0.3 KB; at a 1 s
  interval that is a 102 s warm-up), so growth after it is a leak;
  beside RSS (which also shows the allocator settling), the count of live Python
  memory blocks (``sys.getallocatedblocks()`` after a full collection);
- garbage collections during the window: their longest pause explains the
  longest lags.

With ``--baseline`` the same checkers then run from bare asyncio loops
(``check(); sleep(interval)``, nothing else) for the same time: the ratio column
separates what the monitor costs from what the machine (and its other tenants) does.

Target on the 2-core machine: p99 lag under 100 ms, no overlaps, memory flat.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import inspect
import math
import os
import random
import socket
import subprocess
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from xnai_core.health.checkers import HealthCheckResult, HealthStatus, HTTPHealthChecker
from xnai_core.health.monitor import HealthMonitor

_MONITOR_DEFAULTS = inspect.signature(HealthMonitor).parameters
DEFAULT_HISTORY = int(_MONITOR_DEFAULTS["history_size"].default)
"""The monitor's default history_size: the benchmark keeps what a default monitor keeps."""
DEFAULT_ALERT_WINDOW = int(_MONITOR_DEFAULTS["alert_window"].default)

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")
BODY = b'{"status": "ok"}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
    + BODY
)


# -- the server (child process) ----------------------------------------------------------


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _serve(port: int) -> None:
    server = await asyncio.start_server(_serve_connection, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def serve(port: int) -> None:
    """Serve 200s on ``port`` until killed."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(port))


# -- measurement helpers -----------------------------------------------------------------


def rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def machine_busy_seconds() -> float:
    """CPU time all processes used since boot, summed over cores (from /proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / TICKS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"benchmark server on port {port} did not start")


class LagLog:
    """Schedule lags in an array allocated up front, so recording them never grows memory."""

    def __init__(self, capacity: int) -> None:
        self.values = array("d", bytes(8 * capacity))
        self.count = 0

    def append(self, lag: float) -> None:
        if self.count < len(self.values):
            self.values[self.count] = lag
            self.count += 1

    def __len__(self) -> int:
        return self.count

    def since(self, start: int) -> list[float]:
        return list(self.values[start : self.count])


class GCWatch:
    """Wall time of each garbage collection, from gc.callbacks."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._started))


class Probe:
    """Wraps a checker; records run starts/ends, lags and overlaps."""

    def __init__(self, inner: HTTPHealthChecker, interval: float, lags: LagLog) -> None:
        self.inner = inner
        self.name = inner.name
        self.timeout = inner.timeout
        self.component_type = inner.component_type
        self.interval = interval
        self.lags = lags
        self.last_end: float | None = None
        self.in_flight = 0
        self.overlaps = 0
        self.runs = 0
        self.unhealthy = 0

    async def check(self) -> HealthCheckResult:
        loop = asyncio.get_running_loop()
        start = loop.time()
        if self.in_flight:
            self.overlaps += 1
        self.in_flight += 1
        if self.last_end is not None:
            self.lags.append(start - (self.last_end + self.interval))
        try:
            result = await self.inner.check()
        finally:
            self.in_flight -= 1
            self.last_end = loop.time()
            self.runs += 1
        if result.status is not HealthStatus.HEALTHY:
            self.unhealthy += 1
        return result

    async def aclose(self) -> None:
        await self.inner.aclose()


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- the benchmark -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measured:
    """What one variant did over the measured window."""

    wall: float
    runs: int
    lags_ms: list[float]
    overlaps: int
    unhealthy: int
    cpu: float
    server_cpu: float
    others_cpu: float
    load: float
    rss_mib: list[float]
    blocks: tuple[int, int]
    gc_pauses: list[tuple[int, float]]
    healthy_in_report: int | None
    warmup: float = 0.0


def make_probes(
    checkers: int, interval: float, port: int, seconds: float
) -> tuple[list[Probe], LagLog]:
    url = f"http://127.0.0.1:{port}/health"
    lags = LagLog(int(checkers * (seconds / interval + 2) * 1.2))
    probes = [
        Probe(HTTPHealthChecker(f"svc{i}", url, timeout=interval), interval, lags)
        for i in range(checkers)
    ]
    return probes, lags


async def measure_window(
    probes: list[Probe], lags: LagLog, duration: float, server_pid: int
) -> Measured:
    """Sample CPU, RSS and lags over ``duration`` seconds while the checks run."""
    lags_before = len(lags)
    gc.collect()
    blocks_start = sys.getallocatedblocks()
    watch = GCWatch()
    gc.callbacks.append(watch)
    rss_samples = [rss_bytes()]
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    server_cpu_start = cpu_seconds(server_pid)
    machine_start = machine_busy_seconds()
    runs_start = sum(p.runs for p in probes)
    overlaps_start = sum(p.overlaps for p in probes)
    unhealthy_start = sum(p.unhealthy for p in probes)
    steps = 6
    for _ in range(steps):
        await asyncio.sleep(duration / steps)
        rss_samples.append(rss_bytes())
    cpu_used = time.process_time() - cpu_start
    wall = time.perf_counter() - wall_start
    server_cpu = cpu_seconds(server_pid) - server_cpu_start
    gc.callbacks.remove(watch)
    gc.collect()
    blocks = (blocks_start, sys.getallocatedblocks())
    return Measured(
        wall=wall,
        runs=sum(p.runs for p in probes) - runs_start,
        lags_ms=[lag * 1000.0 for lag in lags.since(lags_before)],
        overlaps=sum(p.overlaps for p in probes) - overlaps_start,
        unhealthy=sum(p.unhealthy for p in probes) - unhealthy_start,
        cpu=cpu_used,
        server_cpu=server_cpu,
        others_cpu=machine_busy_seconds() - machine_start - cpu_used - server_cpu,
        load=os.getloadavg()[0],
        rss_mib=[sample / 2**20 for sample in rss_samples],
        blocks=blocks,
        gc_pauses=watch.pauses,
        healthy_in_report=None,
    )


async def run_monitor(
    checkers: int,
    interval: float,
    duration: float,
    warmup: float,
    history: int,
    port: int,
    server_pid: int,
) -> Measured:
    """The HealthMonitor schedules the checkers (default jitter, timeouts, hysteresis)."""
    probes, lags = make_probes(checkers, interval, port, 2 * warmup + duration)
    monitor = HealthMonitor(
        check_interval=interval,
        history_size=history,
        alert_window=min(history, DEFAULT_ALERT_WINDOW),
        alert_thresholds={"success_rate": 95, "response_time": 5.0},
    )
    for probe in probes:
        monitor.add_checker(probe)
    await monitor.start_monitoring()
    # Every history full: a run takes interval plus the check's own time, so a fixed
    # interval * history leaves the slowest histories still filling (as objects they
    # then looked like a leak). Wait for the runs, for at most twice the nominal time.
    loop = asyncio.get_running_loop()
    started, give_up = loop.time(), loop.time() + 2 * warmup
    await asyncio.sleep(warmup)
    for _ in range(math.ceil(warmup / interval)):
        if min(p.runs for p in probes) > history or loop.time() >= give_up:
            break
        await asyncio.sleep(interval)
    warmed = loop.time() - started
    measured = await measure_window(probes, lags, duration, server_pid)
    healthy = monitor.get_health_report()["summary"]["healthy"]
    await monitor.stop_monitoring()
    return replace(measured, healthy_in_report=healthy, warmup=warmed)


async def run_bare(
    checkers: int, interval: float, duration: float, warmup: float, port: int, server_pid: int
) -> Measured:
    """Baseline: one plain task per checker, `check(); sleep(interval)`, nothing else."""
    probes, lags = make_probes(checkers, interval, port, warmup + duration)

    async def loop(probe: Probe) -> None:
        await asyncio.sleep(random.uniform(0.0, interval))
        while True:
            await probe.check()
            await asyncio.sleep(interval)

    tasks = [asyncio.create_task(loop(probe)) for probe in probes]
    await asyncio.sleep(warmup)
    measured = await measure_window(probes, lags, duration, server_pid)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for probe in probes:
        await probe.aclose()
    return measured


def _ratio(ours: float, base: float) -> str:
    return f"{ours / base:.2f}" if base > 0 else ""


def print_table(
    checkers: int,
    interval: float,
    warmup: float,
    history: int,
    ours: Measured,
    bare: Measured | None,
) -> None:
    print(
        f"bench_health: {checkers} HTTP checkers, interval {interval:g} s, measured"
        f" {ours.wall:.1f} s after {warmup:.0f} s warm-up (history_size={history}, full);"
        f" one loopback server in its own process; Python {sys.version.split()[0]},"
        f" {os.cpu_count()} CPUs"
    )
    header = f"{'metric':34} {'monitor':>14} {'target':>7}"
    if bare is not None:
        header += f" {'bare loop':>14} {'ratio':>6}"
    print(header)

    def row(label: str, pick: Callable[[Measured], float], fmt: str, target: str = "") -> None:
        line = f"{label:34} {format(pick(ours), fmt):>14} {target:>7}"
        if bare is not None:
            line += f" {format(pick(bare), fmt):>14} {_ratio(pick(ours), pick(bare)):>6}"
        print(line)

    row("runs per second", lambda m: m.runs / m.wall, ".1f", f"{checkers / interval:.0f}")
    row("schedule lag p50 (ms)", lambda m: percentile(m.lags_ms, 0.50), ".2f")
    row("schedule lag p99 (ms)", lambda m: percentile(m.lags_ms, 0.99), ".2f", "< 100")
    row("schedule lag max (ms)", lambda m: max(m.lags_ms, default=math.nan), ".2f")
    row("overlapping runs", lambda m: m.overlaps, "d", "0")
    row("non-healthy results", lambda m: m.unhealthy, "d", "0")
    row("process CPU (% of one core)", lambda m: 100.0 * m.cpu / m.wall, ".1f")
    row("  per check (us CPU)", lambda m: 1e6 * m.cpu / max(m.runs, 1), ".0f")
    row("server CPU (% of one core)", lambda m: 100.0 * m.server_cpu / m.wall, ".1f")
    row("others' CPU (% of one core)", lambda m: 100.0 * m.others_cpu / m.wall, ".1f")
    row("load average (1 min), end", lambda m: m.load, ".2f")
    row("RSS start (MiB)", lambda m: m.rss_mib[0], ".1f")
    row("RSS end (MiB)", lambda m: m.rss_mib[-1], ".1f", "flat")
    row("RSS end / start", lambda m: m.rss_mib[-1] / m.rss_mib[0], ".3f")
    row("Python blocks start (k)", lambda m: m.blocks[0] / 1000, ".1f")
    row("Python blocks end (k)", lambda m: m.blocks[1] / 1000, ".1f", "flat")
    row("GC gen-2 collections", lambda m: sum(g == 2 for g, _ in m.gc_pauses), "d")
    row("GC longest pause (ms)", lambda m: 1e3 * max((p for _, p in m.gc_pauses), default=0), ".1f")
    row("GC total (% of wall)", lambda m: 100 * sum(p for _, p in m.gc_pauses) / m.wall, ".2f")
    print(f"{'RSS samples (MiB), monitor':34} " + " ".join(f"{v:.1f}" for v in ours.rss_mib))
    print(f"{'report: healthy / total':34} {ours.healthy_in_report}/{checkers}")


async def run(
    checkers: int,
    interval: float,
    duration: float,
    history: int,
    baseline: bool,
    port: int,
    server_pid: int,
) -> int:
    # Warm up until every checker has run `history` times: its connection is open and
    # its bounded history full, so what RSS does next is what it does for ever.
    warmup = interval * (history + 2)
    ours = await run_monitor(checkers, interval, duration, warmup, history, port, server_pid)
    bare = None
    if baseline:
        base_warmup = interval * 2 + 1.0
        bare = await run_bare(checkers, interval, duration, base_warmup, port, server_pid)
    print_table(checkers, interval, ours.warmup, history, ours, bare)
    return 0 if ours.overlaps == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds measured (60)")
    parser.add_argument("--checkers", type=int, default=500, help="HTTP checkers (500)")
    parser.add_argument("--interval", type=float, default=1.0, help="check interval, s (1)")
    parser.add_argument(
        "--history",
        type=int,
        default=DEFAULT_HISTORY,
        help=f"the monitor's history_size (default: the monitor's, {DEFAULT_HISTORY})",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="then run the same checkers from bare asyncio loops, for comparison",
    )
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve)
        return 0
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.bench_health", "--serve", str(port)],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, time.monotonic() + 10)
        return asyncio.run(
            run(
                args.checkers,
                args.interval,
                args.duration,
                args.history,
                args.baseline,
                port,
                server.pid,
            )
        )
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    sys.exit(main())
