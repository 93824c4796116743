"""A randomized fault run of one Redis-shared circuit, and the checks of its history.

Several OS processes (``python -m tests.redis_chaos '<json spec>'``) call one circuit
through :class:`~tests.fault_proxy.FaultProxy` in front of a private redis-server, each
with a client built as users build it (``redis.asyncio.Redis(host=..., port=...)``:
redis-py's default retry policy on). While they call, :func:`inject_faults` drops
replies after Redis acted (FIN or RST), delays them past ``op_timeout``, black-holes
replies and whole connections, resets connections; the workers cancel their own callers
at random. Then the faults stop and the workers only watch their mirrors.

Everything that matters is recorded with the wall clock of this one machine: every
call (its start, end, outcome, and when the protected function ran), every failure
reported (with the epoch of its ticket), every trial permit handed out and given back,
every transition of each mirror, the samples of each mirror after the faults, the lag
of each worker's event loop, and (from a subscriber straight to the server) every state
Redis published. :func:`check` reads the invariants off that history:

1. no opening (in Redis or in a mirror deciding locally) before ``failure_threshold``
   real failures of that closed state were reported;
2. at no time more than ``half_open_max_calls`` trials of one half-open episode held a
   permit (or had succeeded);
3. no call waited for Redis longer than ``op_timeout`` (plus the loop's own lag);
4. no exception other than the documented ones reached a caller;
5. within ``converge_bound`` of the faults' end every process mirrors what Redis holds,
   synced, and keeps doing so; no trial permit is left taken.

The random choices come from the seed; timing does not, so a seed names a plan, not a
replay. :func:`run_chaos` returns the history, :func:`check` its violations.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from tests.fault_proxy import (
    Connection,
    FaultProxy,
    Rule,
    on_connections_that_sent,
    replies_to,
)
from tests.redis_helpers import (
    collect,
    kill_leftovers,
    release_workers,
    spawn_worker,
    wait_until_ready,
)
from xnai_core import (
    CallTimeoutError,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    RedisStore,
)
from xnai_core.circuit.machine import Admission, CircuitState, Snapshot, Ticket
from xnai_core.circuit.redis_codec import message_reply

PREFIX = "xnai:cb:"
NAME = "chaos"
KEY = f"{PREFIX}{{{NAME}}}"


@dataclass(frozen=True)
class Plan:
    """What one seed runs: processes, callers, phases (seconds) and the circuit."""

    seed: int
    processes: int = 4
    callers: int = 5
    fault_seconds: float = 8.0
    quiet_seconds: float = 9.0
    converge_bound: float = 7.0
    op_timeout: float = 0.25
    resync_interval: float = 1.0
    config: dict[str, Any] = field(
        default_factory=lambda: {
            "failure_threshold": 3,
            "recovery_timeout": 0.3,
            "half_open_max_calls": 2,
            "timeout": 0.3,
            "half_open_lease": 10.0,
        }
    )


# How long the dependency's sickness lasts before it changes (seconds).
SLOT = 0.5

# -- the worker process ----------------------------------------------------------------


class Boom(Exception):
    """The protected dependency failed."""


_INSIDE = contextvars.ContextVar("chaos_inside_acquire", default=False)


class RecordingStore(RedisStore):
    """A RedisStore that writes down what the breaker asked and what the mirror did."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures: list[tuple[float, int]] = []
        self.trials: dict[tuple[int, int], dict[str, Any]] = {}
        self.duplicates: list[tuple[int, int]] = []
        self.transitions: list[dict[str, Any]] = []
        self.mirror.observer = self._observe

    def _note(self, admission: Admission | None, asked: float) -> None:
        if admission is None or admission.ticket is None or not admission.ticket.permit:
            return
        key = (admission.ticket.epoch, admission.ticket.permit)
        if key in self.trials:
            self.duplicates.append(key)  # one permit handed to two callers
        self.trials[key] = {"asked": asked, "t0": time.time(), "t1": None, "end": None}

    def _ended(self, ticket: Ticket, end: str) -> None:
        trial = self.trials.get((ticket.epoch, ticket.permit))
        if trial is not None and trial["t1"] is None:
            trial["t1"], trial["end"] = time.time(), end

    def acquire_nowait(self) -> Admission | None:
        asked = time.time()
        admission = super().acquire_nowait()
        if not _INSIDE.get():
            self._note(admission, asked)
        return admission

    async def acquire(self) -> Admission:
        asked = time.time()
        token = _INSIDE.set(True)
        try:
            admission = await super().acquire()
        finally:
            _INSIDE.reset(token)
        self._note(admission, asked)
        return admission

    async def record_failure(self, ticket: Ticket) -> None:
        self.failures.append((time.time(), ticket.epoch))
        self._ended(ticket, "failure")
        await super().record_failure(ticket)

    def record_failure_nowait(self, ticket: Ticket) -> Awaitable[object] | None:
        self.failures.append((time.time(), ticket.epoch))
        self._ended(ticket, "failure")
        return super().record_failure_nowait(ticket)

    async def record_success(self, ticket: Ticket) -> None:
        self._ended(ticket, "success")
        await super().record_success(ticket)

    async def release(self, ticket: Ticket) -> None:
        self._ended(ticket, "release")
        await super().release(ticket)

    def _observe(self, old: Snapshot, new: Snapshot, reason: str | None) -> None:
        if new.epoch != old.epoch or new.state is not old.state:
            self.transitions.append(
                {
                    "t": time.time(),
                    "old": old.state.value,
                    "new": new.state.value,
                    "old_epoch": old.epoch,
                    "epoch": new.epoch,
                    "failures": new.failure_count,
                    "reason": reason,
                }
            )


async def _lag_meter(lags: list[tuple[float, float]], stop: asyncio.Event) -> None:
    """Record how late the loop wakes a 10 ms sleep (when it is more than 20 ms late)."""
    while not stop.is_set():
        before = time.monotonic()
        await asyncio.sleep(0.01)
        late = time.monotonic() - before - 0.01
        if late > 0.02:
            lags.append((time.time(), late))


async def _caller(
    breaker: CircuitBreaker,
    rng: random.Random,
    go: float,
    stop_at: float,
    sickness: list[float],
    solo: bool,
    calls: list[dict[str, Any]],
) -> None:
    while (now := time.time()) < stop_at:
        # How sick the dependency is changes every half second, the same for everyone.
        # A negative sickness is a solo: one caller of one process fails alone, one call
        # at a time (no success resets the count): every failure of the circuit is its.
        sick = sickness[min(int((now - go) / SLOT), len(sickness) - 1)]
        if sick < 0 and not (solo and int(-sick) == 1):
            await asyncio.sleep(0.02)
            continue
        if sick < 0:
            kind = "fail"
        else:
            weights = [1 - sick, sick, 0.1, 0.05]
            kind = rng.choices(["ok", "fail", "slow", "hang"], weights=weights)[0]
        call: dict[str, Any] = {"kind": kind, "t0": time.time()}
        calls.append(call)

        async def protected(call: dict[str, Any] = call, kind: str = kind) -> str:
            call["f0"] = time.time()
            try:
                if kind == "ok":
                    await asyncio.sleep(rng.uniform(0, 0.02))
                elif kind == "fail":
                    await asyncio.sleep(rng.uniform(0, 0.02))
                    raise Boom
                elif kind == "slow":
                    await asyncio.sleep(0.1)
                else:
                    await asyncio.sleep(5)  # the breaker's timeout (0.3 s) ends it
                return "ok"
            finally:
                call["f1"] = time.time()

        async def one(call: dict[str, Any] = call, protected: Any = protected) -> None:
            try:
                await breaker.call(protected)
                call["out"] = "ok"
            except Boom:
                call["out"] = "failed"
            except CircuitOpenError:
                call["out"] = "rejected"
            except CallTimeoutError:
                call["out"] = "timeout"
            except asyncio.CancelledError:
                call["out"] = "cancelled"
                raise
            except Exception as exc:  # a Redis error reaching the caller: a violation
                call["out"] = f"error: {exc!r}"
            finally:
                call["t1"] = time.time()

        task = asyncio.create_task(one())
        if rng.random() < 0.15:
            done, _ = await asyncio.wait((task,), timeout=rng.uniform(0, 0.3))
            if not done:
                task.cancel()
                call["cancelled"] = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        pause = 0.05 if call.get("out") == "rejected" else 0.02
        await asyncio.sleep(rng.uniform(0, pause))


async def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One process of the run: call through the proxy, then watch; return the record."""
    config = CircuitBreakerConfig(name=NAME, **spec["config"])
    client = aioredis.Redis(host="127.0.0.1", port=spec["proxy_port"])  # as users build it
    control = aioredis.Redis(host="127.0.0.1", port=spec["server_port"])
    store = RecordingStore(
        config,
        client,
        key_prefix=PREFIX,
        op_timeout=spec["op_timeout"],
        resync_interval=spec["resync_interval"],
    )
    breaker = CircuitBreaker(config, store=store)
    calls: list[dict[str, Any]] = []
    lags: list[tuple[float, float]] = []
    samples: list[tuple[float, bool, str, int]] = []
    stop_meter = asyncio.Event()
    try:
        await store.start()
        for _ in range(200):  # a loaded machine may take a while to connect
            if store.available:
                break
            await asyncio.sleep(0.05)
        await control.rpush(spec["ready_key"], spec["id"])
        await control.blpop([spec["go_key"]], timeout=60)
        go = time.time()
        stop_at = go + spec["fault_seconds"]
        meter = asyncio.create_task(_lag_meter(lags, stop_meter))
        rng = random.Random(spec["seed"])
        await asyncio.gather(
            *(
                _caller(
                    breaker,
                    random.Random(rng.random()),
                    go,
                    stop_at,
                    # A solo slot names its process: -(1 + id) is for caller 0 of it.
                    [
                        x if x >= 0 else (-1.0 if x == -(1 + spec["id"]) else -2.0)
                        for x in spec["sickness"]
                    ],
                    index == 0,
                    calls,
                )
                for index in range(spec["callers"])
            )
        )
        watch_until = stop_at + spec["quiet_seconds"]
        while time.time() < watch_until:
            snap = store.snapshot()
            samples.append((time.time(), store.available, snap.state.value, snap.epoch))
            await asyncio.sleep(0.05)
        stop_meter.set()
        await meter
        return {
            "id": spec["id"],
            "go": go,
            "calls": calls,
            "failures": store.failures,
            "trials": [
                {"epoch": epoch, "permit": permit, **trial}
                for (epoch, permit), trial in store.trials.items()
            ],
            "duplicates": store.duplicates,
            "transitions": store.transitions,
            "samples": samples,
            "lags": lags,
            "metrics": store.backend_metrics(),
        }
    finally:
        await breaker.close()
        await client.aclose()
        await control.aclose()


# -- the test process ---------------------------------------------------------------------


@dataclass
class History:
    """What one run recorded."""

    plan: Plan
    workers: list[dict[str, Any]]
    # (time received, lineage, version, snapshot) of every state Redis published.
    published: list[tuple[float, str, int, Snapshot]]
    faults: list[tuple[float, str]]
    healed_at: float
    final: dict[str, str]


async def inject_faults(
    proxy: FaultProxy,
    rng: random.Random,
    until: float,
    log: list[tuple[float, str]],
    solo: Callable[[], bool] = lambda: False,
) -> None:
    """Throw a random fault every 50-400 ms until ``until`` (wall clock); while
    ``solo()`` (one caller fails alone), a late answer to its report half the time."""
    holes: list[tuple[float, Connection]] = []
    partitions: list[tuple[float, Rule]] = []
    scripts = replies_to("EVALSHA")
    while time.time() < until:
        for ends, connection in list(holes):
            if time.time() >= ends:  # a black hole does not last for ever: the kernel gives up
                holes.remove((ends, connection))
                connection.close(rst=True)
        for ends, rule in list(partitions):
            if time.time() >= ends:
                partitions.remove((ends, rule))
                rule.active = False
        fault = rng.choices(
            ["drop", "reset", "delay", "slow", "hole-reply", "hole", "kill", "pubsub", "none"],
            weights=[4, 2, 3, 2, 1, 1, 1, 1, 2],
        )[0]
        if solo() and rng.random() < 0.5:
            fault = "slow"
        picked = ""
        if fault in ("slow", "hole", "hole-reply") and rng.random() < 0.5:
            # No new connection gets through for a while (a failover, a full conntrack
            # table): whoever loses one decides locally until it ends.
            rule = proxy.drop_replies(replies_to("HELLO"), count=None)
            partitions.append((time.time() + rng.uniform(0.3, 1.5), rule))
            picked = " + no new connections"
        if fault == "drop":
            proxy.drop_replies(scripts, count=rng.randint(1, 3))
        elif fault == "reset":
            proxy.drop_replies(scripts, count=1, reset=True)
        elif fault == "delay":
            proxy.delay_replies(0.01, 0.2, when=scripts, count=rng.randint(1, 5))
        elif fault == "slow":
            proxy.delay_replies(0.3, 0.8, when=scripts, count=rng.randint(1, 3))
        elif fault == "hole-reply":
            proxy.black_hole_replies(scripts, count=1)
        elif fault in ("hole", "kill") and proxy.connections:
            connection = rng.choice(proxy.connections)
            picked += f" #{connection.number}"
            if fault == "hole":
                connection.black_holed = True
                holes.append((time.time() + rng.uniform(0.3, 2.0), connection))
            else:
                connection.close(rst=True)
        elif fault == "pubsub":
            proxy.delay_replies(
                0.05, 0.6, when=on_connections_that_sent("PSUBSCRIBE"), count=rng.randint(1, 4)
            )
        log.append((time.time(), fault + picked))
        await asyncio.sleep(rng.uniform(0.05, 0.4))
    proxy.heal()
    for _, connection in holes:
        connection.close(rst=True)
    proxy.reset(lambda c: c.black_holed)


async def _listen(pubsub: Any, out: list[tuple[float, str, int, Snapshot]]) -> None:
    while True:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None and message.get("type") == "message":
            news = message_reply(message["data"].decode())
            out.append((time.time(), news.gen, news.ver, news.snap))


async def run_chaos(plan: Plan, server_port: int) -> History:
    """Run ``plan`` against the private redis-server on ``server_port``; its history."""
    proxy = FaultProxy(server_port, rng=random.Random(plan.seed))
    await proxy.start()
    direct = aioredis.Redis(host="127.0.0.1", port=server_port)
    pubsub = direct.pubsub()
    await pubsub.subscribe(KEY)
    published: list[tuple[float, str, int, Snapshot]] = []
    listener = asyncio.create_task(_listen(pubsub, published))
    tag = uuid.uuid4().hex[:8]
    ready, go = f"chaos:{tag}:ready", f"chaos:{tag}:go"
    rng = random.Random(plan.seed)
    sickness = [
        rng.choice([0.0, 0.05, 0.2, 0.5, 0.9, -1.0 - rng.randrange(plan.processes)])
        for _ in range(int(plan.fault_seconds / SLOT) + 1)
    ]
    specs = [
        {
            "id": index,
            "seed": rng.random(),
            "proxy_port": proxy.port,
            "server_port": server_port,
            "config": plan.config,
            "op_timeout": plan.op_timeout,
            "resync_interval": plan.resync_interval,
            "callers": plan.callers,
            "sickness": sickness,
            "fault_seconds": plan.fault_seconds,
            "quiet_seconds": plan.quiet_seconds,
            "ready_key": ready,
            "go_key": go,
        }
        for index in range(plan.processes)
    ]
    workers = [spawn_worker(spec, module="tests.redis_chaos") for spec in specs]
    faults: list[tuple[float, str]] = []
    try:
        await wait_until_ready(direct, ready, len(workers), timeout=30)
        await release_workers(direct, go, len(workers))
        started = time.time()

        def solo() -> bool:
            slot = min(int((time.time() - started) / SLOT), len(sickness) - 1)
            return sickness[slot] < 0

        await inject_faults(proxy, rng, started + plan.fault_seconds, faults, solo)
        healed_at = time.time()
        results = await collect(workers)
        raw: dict[bytes, bytes] = await direct.hgetall(KEY)  # type: ignore[assignment]
        final = {k.decode(): v.decode() for k, v in raw.items()}
    finally:
        kill_leftovers(workers)
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await pubsub.aclose()
        await direct.aclose()
        await proxy.aclose()
    return History(plan, list(results), published, faults, healed_at, final)


# -- the invariants -------------------------------------------------------------------------


def _failures_before(
    workers: list[dict[str, Any]], epoch: int, until: float, only: int | None = None
) -> int:
    return sum(
        1
        for w in workers
        if only is None or w["id"] == only
        for t, ticket_epoch in w["failures"]
        if ticket_epoch == epoch and t <= until
    )


def check_threshold(history: History) -> Iterator[str]:
    """No opening before failure_threshold real failures of the closed state it left."""
    threshold = history.plan.config["failure_threshold"]
    states = {snap.epoch: snap.state for _, _, _, snap in history.published}
    for t, _, _, snap in history.published:
        before = states.get(snap.epoch - 1)
        if snap.state is not CircuitState.OPEN or snap.forced or before is not CircuitState.CLOSED:
            continue
        real = _failures_before(history.workers, snap.epoch - 1, t)
        if real < threshold:
            yield (
                f"redis opened at epoch {snap.epoch} (from closed {snap.epoch - 1}) after "
                f"{real} real failures of that epoch; threshold {threshold}"
            )
    for w in history.workers:
        for tr in w["transitions"]:
            local_open = tr["epoch"] < 0 and tr["new"] == "open" and tr["old"] == "closed"
            if not local_open:
                continue
            only = w["id"] if tr["old_epoch"] <= 0 else None
            real = _failures_before(history.workers, tr["old_epoch"], tr["t"], only)
            if real < threshold:
                yield (
                    f"worker {w['id']} opened locally at {tr['t']:.3f} from closed epoch "
                    f"{tr['old_epoch']} after {real} real failures; threshold {threshold}"
                )


def check_trials(history: History) -> Iterator[str]:
    """At no time more than half_open_max_calls trials of one episode held a permit."""
    limit = history.plan.config["half_open_max_calls"]
    lease = history.plan.config["half_open_lease"]
    groups: dict[tuple[int, int | None], list[dict[str, Any]]] = {}
    for w in history.workers:
        for key in w["duplicates"]:
            yield f"worker {w['id']}: permit {key} handed to two callers"
        for trial in w["trials"]:
            owner = None if trial["epoch"] > 0 else w["id"]
            groups.setdefault((trial["epoch"], owner), []).append(trial)
    for (epoch, owner), trials in groups.items():
        for trial in trials:
            at = trial["t0"]
            holding = [
                other
                for other in trials
                if other["t0"] <= at
                and (
                    other["t1"] is None
                    or other["t1"] >= at
                    or (other["end"] == "success" and at < other["asked"] + lease)
                )
            ]
            if len(holding) > limit:
                where = "redis" if owner is None else f"worker {owner} (local)"
                yield (
                    f"{len(holding)} trials of episode {epoch} in {where} held permits at "
                    f"{at:.3f}; limit {limit}: {sorted(o['permit'] for o in holding)}"
                )
                break


def _lag_during(lags: list[tuple[float, float]], start: float, end: float) -> float:
    return sum(late for t, late in lags if start <= t <= end + late)


def check_waits(history: History) -> Iterator[str]:
    """No call waited for Redis longer than op_timeout (plus its loop's own lag); no
    undocumented exception reached a caller."""
    bound = history.plan.op_timeout
    for w in history.workers:
        for call in w["calls"]:
            out = call.get("out", "")
            if out.startswith("error"):
                yield f"worker {w['id']}: a caller got {out}"
            if call.get("cancelled") or "t1" not in call:
                continue
            ran = call["f1"] - call["f0"] if "f1" in call else 0.0
            waited = call["t1"] - call["t0"] - ran
            allowed = bound + 0.1 + _lag_during(w["lags"], call["t0"], call["t1"])
            if waited > allowed:
                yield (
                    f"worker {w['id']}: a {call['kind']} call ({out}) at {call['t0']:.3f} "
                    f"waited {waited:.3f}s for redis; bound {allowed:.3f}s"
                )


def check_convergence(history: History) -> Iterator[str]:
    """Within converge_bound of the faults' end every process mirrors Redis, synced, and
    stays so; Redis itself has stopped changing; no trial permit is left taken."""
    final = history.final
    truth = (final.get("state"), int(final.get("epoch", "0")))
    limit = history.healed_at + history.plan.converge_bound
    late = [(t, snap) for t, _, _, snap in history.published if t > limit]
    if late:
        yield f"redis still changed {late[-1][0] - history.healed_at:.2f}s after the faults"
    leaked = sorted(k for k in final if k.startswith("trial:"))
    if leaked:
        yield f"trial permits left taken in redis after every call ended: {leaked}"
    for w in history.workers:
        agreed_at = None
        for t, available, state, epoch in w["samples"]:
            if available and (state, epoch) == truth:
                if agreed_at is None:
                    agreed_at = t
            else:
                agreed_at = None
        if agreed_at is None:
            last = w["samples"][-1] if w["samples"] else None
            yield f"worker {w['id']} never agreed with redis {truth}: last sample {last}"
        elif agreed_at > limit:
            yield (
                f"worker {w['id']} agreed with redis {truth} only "
                f"{agreed_at - history.healed_at:.2f}s after the faults"
            )


def check(history: History) -> list[str]:
    """Every invariant's violations, in one list."""
    return [
        *check_threshold(history),
        *check_trials(history),
        *check_waits(history),
        *check_convergence(history),
    ]


def summary(history: History) -> str:
    """A line of figures: what the run did."""
    calls = [c for w in history.workers for c in w["calls"]]
    outs: dict[str, int] = {}
    for call in calls:
        outs[call.get("out", "?")] = outs.get(call.get("out", "?"), 0) + 1
    opens = sum(1 for _, _, _, snap in history.published if snap.state is CircuitState.OPEN)
    metrics: dict[str, int] = {}
    for w in history.workers:
        for name, value in w["metrics"].items():
            metrics[name] = metrics.get(name, 0) + int(value)
    return (
        f"seed {history.plan.seed}: {len(calls)} calls {outs}; {len(history.faults)} faults; "
        f"{opens} openings in redis; {metrics}"
    )


if __name__ == "__main__":
    outcome = asyncio.run(worker(json.loads(sys.argv[1])))
    print(json.dumps(outcome, default=str), flush=True)
