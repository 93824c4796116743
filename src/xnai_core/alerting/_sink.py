"""The delivery core every sink shares: routing, a bounded queue, one task, retries.

A sink is an alert handler (``monitor.add_alert_handler(sink)``). Calling it
only files the alert: it never awaits, never raises, and returns at once, so a
slow or dead destination cannot hold up a health check, the monitor's other
handlers, another sink or the application. Each sink then delivers from its
own task, one notification at a time. Each alert has its own lane: its raise,
reminders and resolve go in the order they came; between alerts, a critical
goes first, then the oldest.

Life of an alert in a sink::

    raise --route?--> active --queued--> sent (then a repeat every repeat_interval)
    resolve of an active alert --queued--> sent, no longer active

An attempt that fails with a retryable error (refused, timed out, HTTP 408,
429 or 5xx) is tried again after an exponential backoff with jitter, or after
the receiver's ``Retry-After`` (never sooner than the backoff); after
``max_attempts`` the sink gives up, logs an ERROR naming the alert and counts
it as dropped. A rejection (other HTTP
4xx) is not retried. While a notice waits for its retry, the destination is
left alone for notices of its severity and below; a more severe one is still
tried (a critical is never held back by a warning's ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random as _random
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import ClassVar, TypedDict

from .._backoff import delay as backoff_delay
from .._redact import redact
from .._validation import check_int, check_seconds, check_size
from ..health.alerts import Alert, Severity
from ._mask import mask_text
from ._model import DeliveryError, Notification, SinkStats
from ._routing import SEVERITY_ORDER, Route

logger = logging.getLogger("xnai_core.alerting")

# How long a sink that cannot drop a retried copy waits for an answer before retrying.
SLOW_REPLY_TIMEOUT = 60.0

DROP_REASONS: tuple[str, ...] = ("queue_full", "rejected", "gave_up", "shutdown")

Sleep = Callable[[float], Awaitable[object]]


class _Attempt:
    """One attempt of ``send()``: whether the destination has accepted already."""

    __slots__ = ("accepted",)

    def __init__(self) -> None:
        self.accepted = False


_attempt_var: ContextVar[_Attempt | None] = ContextVar("xnai_alert_attempt", default=None)


def mark_accepted() -> None:
    """Say, from within ``send()``, that the destination has accepted the notification
    (an HTTP status line of 2xx): what the attempt still does (reading the rest of the
    reply) cannot undo that, so running out of time from here on is no failure, and the
    notification is not sent again. Outside an attempt it does nothing."""
    attempt = _attempt_var.get()
    if attempt is not None:
        attempt.accepted = True


# Every sink alive in this process, for the metrics adapters to read at scrape
# time (weak: a sink dropped by its owner leaves no series and no leak behind).
_live: weakref.WeakSet[AlertSink] = weakref.WeakSet()
_live_lock = threading.Lock()


def fingerprint(*parts: object) -> str:
    """A SHA-256 digest of ``parts`` (their reprs): equal parts, equal digest."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _loop_time() -> float:
    """The running loop's clock (what repeats are scheduled on), else the monotonic one."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


def _same_raise(one: Alert, other: Alert) -> bool:
    return one.key == other.key and one.timestamp == other.timestamp


def live_sinks() -> list[AlertSink]:
    """The sinks alive now, in no particular order."""
    with _live_lock:
        return list(_live)


@dataclass(slots=True)
class _Active:
    """An alert this sink took and has not seen resolved."""

    raised: Alert
    repeats: int = 0
    next_repeat: float | None = None  # loop time; None while a notice of it is pending
    told: bool = False  # a notice of it reached the destination


@dataclass(slots=True, eq=False)
class _Pending:
    """A queued notification and the attempts made at it so far."""

    note: Notification
    attempts: int = 0

    @property
    def rank(self) -> int:
        return SEVERITY_ORDER[self.note.severity]


@dataclass(slots=True)
class _Hold:
    """The destination is left alone until ``until`` (loop time) for notices of a rank and below."""

    until: float
    retry_after: bool  # asked by the receiver (kept after a success), else our own backoff


class DeliveryOptions(TypedDict, total=False):
    """The keyword arguments every sink takes (see :class:`AlertSink`)."""

    name: str | None
    min_severity: Severity | None
    services: Collection[str] | None
    exclude_services: Collection[str] | None
    queue_size: int
    max_attempts: int
    backoff_base: float
    backoff_max: float
    max_retry_after: float
    timeout: float
    reply_timeout: float | None
    sleep: Sleep
    random: Callable[[], float]
    wall_clock: Callable[[], float]


class SinkOptions(DeliveryOptions, total=False):
    """:class:`DeliveryOptions` and ``repeat_interval``."""

    repeat_interval: float | None


class AlertSink:
    """Base of every sink: subclass it and implement :meth:`send` to add a destination.

    Keyword arguments shared by all sinks:

    - ``name``: how logs and stats call this sink (default: its kind, e.g. ``"slack"``).
    - ``min_severity``: the lowest severity of a raise it takes (``"info"``,
      ``"warning"``, ``"critical"``). Resolved notices follow their raise.
    - ``services`` / ``exclude_services``: the services it is for (default: all).
    - ``repeat_interval``: seconds between reminders of an alert that stays
      active (default ``None``: no reminders).
    - ``queue_size``: notifications waiting at most (default 256); a resolve is never
      dropped for room (it may go over the bound).
    - ``max_attempts``: attempts per notification before giving up (default 8).
    - ``backoff_base`` / ``backoff_max``: the retry delays (1 s doubling to 60 s,
      each shortened by a random part of up to half).
    - ``max_retry_after``: the longest ``Retry-After`` honoured (300 s).
    - ``timeout``: the bound of one attempt, connection included (10 s).
    - ``reply_timeout``: how long an answer is awaited once the request is sent
      (default ``timeout``; 60 s on sinks whose destination cannot drop a
      retried copy, ``idempotent = False``: Slack). An attempt is then bounded
      by ``timeout + reply_timeout``.
    - ``sleep``, ``random``, ``wall_clock``: injectable for tests.
    """

    kind: ClassVar[str] = "sink"
    default_min_severity: ClassVar[Severity] = "warning"
    # True when a retried copy of a notice that did arrive is dropped by the destination
    # (a dedup key, the same labels, a delivery id). Otherwise a timed-out answer is a
    # likely duplicate: such sinks wait longer for it (SLOW_REPLY_TIMEOUT).
    idempotent: ClassVar[bool] = True
    # True when the destination keeps the alert's state from what is posted (Alertmanager):
    # a sink rebuilt by a reload posts every active alert at once, with its new settings.
    restate_on_adopt: ClassVar[bool] = False

    def __init__(
        self,
        *,
        name: str | None = None,
        min_severity: Severity | None = None,
        services: Collection[str] | None = None,
        exclude_services: Collection[str] | None = None,
        repeat_interval: float | None = None,
        queue_size: int = 256,
        max_attempts: int = 8,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        max_retry_after: float = 300.0,
        timeout: float = 10.0,
        reply_timeout: float | None = None,
        sleep: Sleep = asyncio.sleep,
        random: Callable[[], float] = _random.random,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if name is None:
            name = self.kind
        if not isinstance(name, str) or not name:
            raise TypeError(f"'name' must be a non-empty str: {type(name).__name__}")
        # How logs, stats and the repr call the sink: a name made of a URL with its
        # password is kept masked, as the metrics' label shows it.
        self.name = redact(name)
        self.route = Route.build(
            self.default_min_severity if min_severity is None else min_severity,
            services,
            exclude_services,
        )
        self.repeat_interval = (
            None if repeat_interval is None else check_seconds("repeat_interval", repeat_interval)
        )
        self.queue_size = check_size("queue_size", queue_size)
        self.max_attempts = check_int("max_attempts", max_attempts, 1)
        self.backoff_base = check_seconds("backoff_base", backoff_base, allow_zero=True)
        self.backoff_max = check_seconds("backoff_max", backoff_max, allow_zero=True)
        self.max_retry_after = check_seconds("max_retry_after", max_retry_after, allow_zero=True)
        self.timeout = check_seconds("timeout", timeout)
        if reply_timeout is None:
            reply_timeout = None if self.idempotent else SLOW_REPLY_TIMEOUT
        self.reply_timeout = (
            self.timeout if reply_timeout is None else check_seconds("reply_timeout", reply_timeout)
        )
        # One attempt: connecting and sending within timeout, then the answer's wait.
        self.attempt_timeout = (
            self.timeout + self.reply_timeout if self.reply_timeout > self.timeout else self.timeout
        )
        self._sleep = sleep
        self._random = random
        self._wall_clock = wall_clock

        self._queue: deque[_Pending] = deque()
        self._active: dict[str, _Active] = {}
        self._in_flight: _Pending | None = None
        self._holds: dict[int, _Hold] = {}  # by severity rank
        self._resumed = asyncio.Event()  # cleared while a predecessor flushes (pause())
        self._resumed.set()
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._released = False
        self._retired = False
        self._close_deadline: float | None = None
        self._failing = False
        self._warned_full = False
        # A reload's handover of a raise that was in flight at the predecessor: the
        # predecessor's record of it, read once it has flushed (told, or to announce).
        self._handed: dict[str, _Active] = {}
        # At a predecessor: keys whose first notice, in flight, a successor took over.
        self._handing: set[str] = set()

        self._sent = 0
        self._retried = 0
        self._dropped = dict.fromkeys(DROP_REASONS, 0)
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._last_sent_at: float | None = None
        with _live_lock:
            _live.add(self)

    # --- what a subclass provides -------------------------------------------------

    async def send(self, note: Notification) -> None:
        """Deliver ``note`` once; raise :class:`DeliveryError` to fail the attempt."""
        raise NotImplementedError

    def secrets(self) -> tuple[str, ...]:
        """Strings never to show (URLs, keys, passwords); scrubbed from every reason."""
        return ()

    def describe(self) -> str:
        """Extra ``repr`` text; never a destination URL or credential."""
        return ""

    async def release(self) -> None:
        """Close what the sink holds open (connections); called once by :meth:`aclose`."""

    # --- the alert handler ----------------------------------------------------------

    async def __call__(self, alert: Alert) -> None:
        """The alert handler: file ``alert`` for delivery (:meth:`submit`) and return at once.

        Async so that the monitor and the recovery manager call it on the event
        loop (a sync handler would be given a thread of its own); it never
        awaits anything and never raises.
        """
        self.submit(alert)

    def submit(self, alert: Alert) -> None:
        """File ``alert`` for delivery without waiting; never raises.

        Safe from any thread: called where no event loop runs, the alert is
        handed to the loop the sink delivers on (or kept until the sink first
        runs on one).
        """
        try:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            loop = self._loop
            if running is None and loop is not None and loop.is_running():
                loop.call_soon_threadsafe(self._offer, alert)
                return
            self._offer(alert)
        except Exception as error:  # the monitor must never see a sink fail
            logger.error(
                "%s: could not file an alert: %s",
                self.name,
                type(error).__name__,
                extra={"xnai.sink": self.name},
            )

    def _offer(self, alert: Alert) -> None:
        if not isinstance(alert, Alert):
            raise TypeError(f"'alert' must be an Alert: {type(alert).__name__}")
        if self._retired:
            return  # replaced: its successor takes the alerts
        key = alert.key
        if alert.resolved:
            active = self._active.pop(key, None)
            if active is None:
                return  # its raise was never taken here: there is nothing to resolve
            note = Notification(alert=alert, raised=active.raised, event="resolved")
        else:
            # A second raise of an active alert is the same page (the recovery
            # manager's escalation reaches a sink added to both it and the monitor).
            if key in self._active or not self.route.admits(alert):
                return
            self._active[key] = _Active(alert)
            note = Notification(alert=alert, raised=alert, event="firing")
        if self._closed:
            self._active.pop(key, None)
            self._drop(note, "shutdown")
            return
        self._enqueue(note)

    def _enqueue(self, note: Notification) -> None:
        if len(self._queue) >= self.queue_size:
            if note.event == "resolved" and self._cancel_unsent_raise(note):
                return
            evicted = self._make_room_for(note)
            if evicted is not None:
                self._drop(evicted, "queue_full")
            elif note.event == "firing":
                self._active.pop(note.key, None)
                self._drop(note, "queue_full")
                return
            # else a resolve goes over the bound, never dropped: it closes a page someone
            # may have seen, and takes the place its alert held among the active ones.
        self._queue.append(_Pending(note))
        self._idle.clear()
        self._wake.set()
        self._ensure_worker()

    def _make_room_for(self, note: Notification) -> Notification | None:
        """The newest queued firing notice never tried that gives way to ``note``, evicted;
        else None. For a resolve, any; for a raise, one less severe.

        A resolve closes a page someone has seen; a queued raise has told nobody
        yet. A critical raise is the page that matters most: a storm of warnings
        filling the queue does not crowd it out. The evicted raise's own resolve,
        should it come, is then not sent either. A raise already tried may have
        arrived (its answer timed out): it is kept, so that its resolve is too.
        """
        rank = SEVERITY_ORDER[note.severity]
        for index in range(len(self._queue) - 1, -1, -1):
            queued = self._queue[index]
            if note.event == "firing" and queued.rank >= rank:
                continue
            if queued.note.event == "firing" and queued.attempts == 0:
                del self._queue[index]
                active = self._active.get(queued.note.key)
                if not queued.note.repeat:
                    self._active.pop(queued.note.key, None)
                    self._drop_queued_resolve_of(queued.note)
                elif active is not None and self.repeat_interval is not None:
                    # The reminder gives way, not the reminders after it.
                    now = self._loop.time() if self._loop is not None else 0.0
                    active.next_repeat = now + self.repeat_interval
                return queued.note
        return None

    def _drop_queued_resolve_of(self, raised: Notification) -> None:
        """An evicted raise takes its queued resolve along: never a resolve without a raise."""
        for index, queued in enumerate(self._queue):
            if queued.note.event == "resolved" and queued.note.raised is raised.raised:
                del self._queue[index]
                self._drop(queued.note, "queue_full")
                return

    def _cancel_unsent_raise(self, note: Notification) -> bool:
        """A resolve whose raise is still queued, never tried: both go, as nobody was told."""
        for index, queued in enumerate(self._queue):
            if (
                queued.note.event == "firing"
                and not queued.note.repeat
                and queued.attempts == 0
                and queued.note.raised is note.raised
            ):
                del self._queue[index]
                self._drop(queued.note, "queue_full")
                self._drop(note, "queue_full")
                return True
        return False

    # --- the worker -------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        if self._worker is not None and not self._worker.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # started by the next call made on a loop, or by drain()/aclose()
        if self._in_flight is not None and not self._closed:
            # Its worker was cancelled from outside (not by aclose()): the notice goes back
            # to its lane's head (before: lost, and drain() spun without yielding).
            self._queue.appendleft(self._in_flight)
            self._in_flight = None
            self._idle.clear()
        self._loop = loop
        self._worker = loop.create_task(self._run(), name=f"xnai-alert-sink-{self.name}")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._resumed.wait()
            if self._handed:
                self._settle_handover(loop.time())
            # Reminders (and Alertmanager's re-posts) come due also while other lanes wait.
            self._queue_due_repeats(loop.time())
            if not self._queue:
                self._idle.set()
                self._warned_full = False
                delay = self._until_next_repeat(loop.time())
                if self._closed or delay is None:
                    return  # nothing to do: a new alert starts a new worker
                await self._doze(delay)
                continue
            now = loop.time()
            index, held_until = self._pick(now)
            if index is None:
                # Every lane waits for a retry: sleep until the first may go, a reminder is
                # due, or a new (perhaps more severe) notice comes.
                wait = max(0.0, (held_until or now) - now)
                deadline = self._close_deadline
                if deadline is not None and now + wait > deadline:
                    return  # aclose() drops what is left, naming each
                reminder = None if self._closed else self._until_next_repeat(now)
                if reminder is not None and reminder < wait:
                    await self._doze(reminder)
                else:
                    # The holds up to the one waited for are lifted when the sleep ends
                    # (compared with the very value, so a test's instant sleep ends them).
                    await self._wait(wait, held_until if held_until is not None else now)
                continue
            pending = self._queue[index]
            del self._queue[index]
            # Left set if the worker is cancelled: aclose() counts it as undelivered.
            self._in_flight = pending
            try:
                await self._try(pending, loop)
            except Exception as error:  # _try handles every failure; this is a bug
                logger.error(
                    "%s: delivery of %s failed: %s",
                    self.name,
                    pending.note.identity(),
                    type(error).__name__,
                    extra={"xnai.sink": self.name, "xnai.alert_key": pending.note.key},
                )
            self._in_flight = None
            # A send that never suspends (a sink of one's own writing to a local file)
            # would run the whole queue in one turn of the loop: health checks wait.
            await asyncio.sleep(0)

    def _pick(self, now: float) -> tuple[int | None, float | None]:
        """The queued notice to send now, and (when none may go) when the first may.

        Only the first notice of each alert may go (its lane keeps raise, reminders and
        resolve in order); of those not held back, the most severe, then the oldest.
        """
        seen: set[str] = set()
        best: int | None = None
        best_rank = -1
        soonest: float | None = None
        for index, pending in enumerate(self._queue):
            key = pending.note.key
            if key in seen:
                continue
            seen.add(key)
            rank = pending.rank
            until = self._held_until(rank)
            if until is not None and until > now:
                soonest = until if soonest is None else min(soonest, until)
                continue
            if rank > best_rank:
                best, best_rank = index, rank
        return best, soonest

    def _held_until(self, rank: int) -> float | None:
        holds = [hold.until for held, hold in self._holds.items() if held >= rank]
        return max(holds) if holds else None

    async def _doze(self, delay: float) -> None:
        """Wait ``delay`` seconds on the loop's clock (reminders), or until woken."""
        self._wake.clear()
        try:
            async with asyncio.timeout(delay):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _wait(self, delay: float, hold_until: float) -> None:
        """Sleep ``delay`` (through the injectable sleep) unless woken by a new notice.

        A sleep that ran out lifts the holds it waited for, also when ``sleep`` is a
        test's instant one.
        """
        self._wake.clear()
        sleeper = asyncio.ensure_future(self._sleep(delay))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            done, _ = await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, waker):
                task.cancel()
            await asyncio.gather(sleeper, waker, return_exceptions=True)
        if sleeper in done:
            for rank, hold in list(self._holds.items()):
                if hold.until <= hold_until:
                    del self._holds[rank]

    async def _try(self, pending: _Pending, loop: asyncio.AbstractEventLoop) -> None:
        """One attempt at ``pending``; on a retryable failure it goes back to its lane's head."""
        note = pending.note
        pending.attempts += 1
        attempt = pending.attempts
        failure = await self._attempt(note)
        if failure is None:
            self._sent += 1
            self._last_sent_at = self._wall_clock()
            # The destination answers: our own backoffs end (a receiver's Retry-After stays).
            for rank, hold in list(self._holds.items()):
                if not hold.retry_after:
                    del self._holds[rank]
            active = self._active.get(note.key)
            if active is not None and active.raised is note.raised and note.event == "firing":
                active.told = True
            if self._failing:
                self._failing = False
                logger.info("%s: delivering again", self.name, extra={"xnai.sink": self.name})
            self._schedule_repeat(note, loop.time())
            return
        self._last_error = failure.reason
        self._last_error_at = self._wall_clock()
        if self._handed_over(note):
            return  # not retried here: the successor announces it (see adopt())
        if not failure.retryable:
            self._give_up(note, "rejected", failure.reason, attempt)
            self._schedule_repeat(note, loop.time())
            return
        if attempt >= self.max_attempts:
            self._give_up(note, "gave_up", failure.reason, attempt)
            self._schedule_repeat(note, loop.time())
            return
        delay = self._delay_after(attempt, failure)
        now = loop.time()
        deadline = self._close_deadline
        if deadline is not None and now + delay > deadline:
            self._give_up(note, "shutdown", failure.reason, attempt)
            return
        if not self._failing:
            self._failing = True
            logger.warning(
                "%s: delivery failing (%s); retrying %s in %.1fs",
                self.name,
                failure.reason,
                note.identity(),
                delay,
                extra={"xnai.sink": self.name, "xnai.alert_key": note.key},
            )
        self._retried += 1
        # The destination is failing for this severity and below: hold them all (one
        # attempt per backoff, not one per queued notice), not the more severe ones.
        current = self._holds.get(pending.rank)
        until = now + delay
        if current is None or current.until < until:
            self._holds[pending.rank] = _Hold(until, failure.retry_after is not None)
        self._queue.appendleft(pending)
        self._idle.clear()

    def _schedule_repeat(self, note: Notification, now: float) -> None:
        active = self._active.get(note.key)
        interval = self.repeat_interval
        if note.event != "firing" or active is None or active.raised is not note.raised:
            return
        active.next_repeat = None if interval is None else now + interval

    def _queue_due_repeats(self, now: float) -> None:
        if self._closed:
            return
        for active in self._active.values():
            if active.next_repeat is not None and active.next_repeat <= now:
                if len(self._queue) >= self.queue_size and self.repeat_interval is not None:
                    # The queue bound holds for reminders too: this one is skipped.
                    active.next_repeat = now + self.repeat_interval
                    continue
                active.next_repeat = None
                active.repeats += 1
                self._queue.append(
                    _Pending(
                        Notification(
                            alert=active.raised,
                            raised=active.raised,
                            event="firing",
                            repeat=active.repeats,
                        )
                    )
                )
        if self._queue:
            self._idle.clear()

    def _until_next_repeat(self, now: float) -> float | None:
        due = [a.next_repeat for a in self._active.values() if a.next_repeat is not None]
        return max(0.0, min(due) - now) if due else None

    async def _attempt(self, note: Notification) -> DeliveryError | None:
        attempt = _Attempt()
        token = _attempt_var.set(attempt)
        try:
            async with asyncio.timeout(self.attempt_timeout):
                await self.send(note)
        except DeliveryError as error:
            return DeliveryError(
                self._safe(error.reason), retryable=error.retryable, retry_after=error.retry_after
            )
        except TimeoutError:
            if attempt.accepted:
                # Accepted, then the rest of the reply outlasted the attempt (a body that
                # stalls or trickles): delivered. Retrying would post it a second time.
                return None
            return DeliveryError(f"timed out after {self.attempt_timeout:g}s", retryable=True)
        except Exception as error:
            # A driver's surprise or a bug: its text may hold anything, so only its type.
            return DeliveryError(f"unexpected {type(error).__name__}", retryable=False)
        finally:
            _attempt_var.reset(token)
        return None

    def _delay_after(self, attempt: int, failure: DeliveryError) -> float:
        # Equal jitter: at least half the delay is kept, so a retry never comes
        # right back; the random half spreads processes that failed together.
        backoff = backoff_delay(
            attempt, base=self.backoff_base, cap=self.backoff_max, rand=self._random(), jitter=0.5
        )
        if failure.retry_after is None:
            return backoff
        # The receiver's wait is a minimum, not a licence: "Retry-After: 0" on every 429
        # would otherwise use up max_attempts in a second (a burst, then a lost page).
        asked = min(max(failure.retry_after, 0.0), self.max_retry_after)
        return max(asked, backoff)

    def _safe(self, text: str) -> str:
        return mask_text(text, self.secrets())

    def _give_up(self, note: Notification, reason: str, error: str, attempts: int) -> None:
        self._dropped[reason] += 1
        logger.error(
            "%s: gave up delivering %s after %d attempt(s): %s",
            self.name,
            note.identity(),
            attempts,
            error,
            extra={"xnai.sink": self.name, "xnai.alert_key": note.key, "xnai.reason": reason},
        )

    def _drop(self, note: Notification, reason: str) -> None:
        self._dropped[reason] += 1
        if reason == "queue_full":
            # One WARNING per overflow, not one per alert of a storm.
            if not self._warned_full:
                self._warned_full = True
                logger.warning(
                    "%s: queue full (%d), dropping %s",
                    self.name,
                    self.queue_size,
                    note.identity(),
                    extra={"xnai.sink": self.name, "xnai.alert_key": note.key},
                )
            return
        logger.error(
            "%s: dropped %s: %s",
            self.name,
            note.identity(),
            reason,
            extra={"xnai.sink": self.name, "xnai.alert_key": note.key, "xnai.reason": reason},
        )

    # --- control ----------------------------------------------------------------------

    def destination(self) -> str:
        """A digest of where this sink delivers, to compare two sinks: its kind and secrets
        by default; a sink whose destination is not all secret adds the rest. A digest, so
        that printing it shows nothing."""
        return fingerprint(self.kind, *self.secrets())

    def retire(self) -> None:
        """Take no more alerts, silently (a config reload removed or replaced this sink, and
        a source that cannot forget a handler may still call it); what is queued is still
        delivered, by :meth:`aclose`."""
        self._retired = True

    def pause(self) -> None:
        """Hold delivery (alerts are still filed and queued) until :meth:`resume`."""
        self._resumed.clear()

    def resume(self) -> None:
        """Deliver again after :meth:`pause`."""
        self._resumed.set()
        if self._handed:
            self._settle_handover(_loop_time())
        self._ensure_worker()

    def adopt(self, alerts: Iterable[Alert], *, predecessor: AlertSink | None = None) -> None:
        """Take alerts already active elsewhere, as if this sink had seen them raised.

        For a sink built while alerts are active (a config reload): each raise this
        sink's route takes is held as active, so that its resolve comes here later, and
        is announced (a firing notice) unless ``predecessor``, a sink to the same
        destination being replaced, has already told it. An announced alert's firing
        notice still queued at ``predecessor`` (untried, or waiting for a retry) is taken
        off that queue. One in flight there to the same destination is left to that
        attempt, and settled when this sink is resumed after ``predecessor`` flushed:
        held as told if it was accepted, else announced here (not retried there).
        """
        same_place = (
            predecessor is not None
            and not self.restate_on_adopt
            and predecessor.destination() == self.destination()
        )
        for alert in alerts:
            if alert.resolved or alert.key in self._active or not self.route.admits(alert):
                continue
            told = None
            if same_place and predecessor is not None:
                told = predecessor._active.get(alert.key)
            if told is not None and not told.told and _same_raise(told.raised, alert):
                flying = predecessor._in_flight if predecessor is not None else None
                if flying is not None and flying.note.raised is told.raised:
                    # Its first notice is on its way there now: whether to announce it is
                    # known once the predecessor has flushed (a second Slack message
                    # otherwise, or a retry from each of the two sinks).
                    assert predecessor is not None
                    predecessor._handing.add(alert.key)
                    self._active[alert.key] = _Active(alert)
                    self._handed[alert.key] = told
                    continue
            if told is not None and told.told and _same_raise(told.raised, alert):
                next_repeat = None
                if self.repeat_interval is not None:
                    next_repeat = told.next_repeat
                    if next_repeat is None:
                        next_repeat = _loop_time() + self.repeat_interval
                self._active[alert.key] = _Active(
                    alert, repeats=told.repeats, told=True, next_repeat=next_repeat
                )
                continue
            if predecessor is not None:
                predecessor._forget_unsent(alert.key)
            self._offer(alert)
        self._ensure_worker()

    def _handed_over(self, note: Notification) -> bool:
        return note.key in self._handing and note.event == "firing" and not note.repeat

    def _settle_handover(self, now: float) -> None:
        """The raises that were in flight at a predecessor (which has flushed by now, when
        this sink was paused for it): told there, they are held as told; else announced
        here, ahead of anything else queued for them (their resolve)."""
        for key, record in list(self._handed.items()):
            del self._handed[key]
            active = self._active.get(key)
            if active is not None and not _same_raise(active.raised, record.raised):
                continue  # resolved and raised again meanwhile: a raise of its own
            if record.told:
                if active is not None:
                    active.told = True
                    active.repeats = record.repeats
                    interval = self.repeat_interval
                    active.next_repeat = None if interval is None else now + interval
                continue
            index = next(
                (i for i, pending in enumerate(self._queue) if pending.note.key == key), None
            )
            if active is not None:
                raised = active.raised
            elif index is not None and _same_raise(self._queue[index].note.raised, record.raised):
                raised = self._queue[index].note.raised  # resolved meanwhile: raise, then resolve
            else:
                continue
            note = Notification(alert=raised, raised=raised, event="firing")
            self._queue.insert(len(self._queue) if index is None else index, _Pending(note))
            self._idle.clear()

    def _forget_unsent(self, key: str) -> None:
        """Take an alert's queued first notice (not delivered: untried, or waiting for a
        retry) off the queue: a successor announces it, and retries it there."""
        for index, pending in enumerate(self._queue):
            note = pending.note
            if note.key != key:
                continue
            if note.event == "firing" and not note.repeat:
                del self._queue[index]
                self._active.pop(key, None)
            return

    def resolve_all_but(self, keys: Collection[str], message: str) -> list[str]:
        """Resolve every alert held active here whose key is not in ``keys`` (the source
        of alerts was replaced and no longer tracks it); the keys resolved."""
        gone = [key for key in self._active if key not in keys]
        for key in gone:
            raised = self._active[key].raised
            self._offer(
                Alert(
                    key=key,
                    service=raised.service,
                    kind=raised.kind,
                    severity="info",
                    message=message,
                    resolved=True,
                )
            )
        return gone

    def told_active(self) -> list[str]:
        """The keys of active alerts this sink has told its destination about."""
        return [key for key, active in self._active.items() if active.told]

    async def drain(self) -> None:
        """Wait until every queued notification is delivered or given up (after
        :meth:`resume`, when paused)."""
        self._ensure_worker()
        while self._queue or self._in_flight is not None:
            self._ensure_worker()
            await self._idle.wait()

    async def aclose(self, timeout: float = 5.0) -> None:
        """Flush queued notifications within ``timeout`` seconds, then stop.

        A retry that would end after the deadline is not waited for; what is
        still undelivered then is dropped and logged (reason ``shutdown``).
        Alerts filed after ``aclose()`` are dropped the same way. Idempotent.
        """
        deadline_in = check_seconds("timeout", timeout, allow_zero=True)
        if self._closed and (self._worker is None or self._worker.done()):
            if not self._released:  # a first aclose() was cancelled before it got here
                self._released = True
                await self.release()
            return
        self._closed = True
        self._resumed.set()
        loop = asyncio.get_running_loop()
        self._close_deadline = loop.time() + deadline_in
        self._ensure_worker()
        self._wake.set()
        worker = self._worker
        try:
            if worker is not None and not worker.done():
                try:
                    await asyncio.wait({worker}, timeout=deadline_in)
                finally:
                    # At the deadline, or when aclose() itself is cancelled: no task is left.
                    if not worker.done():
                        worker.cancel()
                        await asyncio.gather(worker, return_exceptions=True)
        finally:
            # Also when aclose() is cancelled: what was not delivered is counted and named.
            self._drop_leftovers()
        self._released = True
        await self.release()

    def _drop_leftovers(self) -> None:
        leftovers = [pending.note for pending in self._queue]
        if self._in_flight is not None and not self._handed_over(self._in_flight.note):
            leftovers.insert(0, self._in_flight.note)
        self._queue.clear()
        self._in_flight = None
        self._active.clear()
        self._idle.set()
        for note in leftovers:
            self._drop(note, "shutdown")

    async def __aenter__(self) -> AlertSink:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def stats(self) -> SinkStats:
        """The counters: sent, retried, dropped (by reason), queued, last error."""
        queued = len(self._queue) + (self._in_flight is not None)
        return SinkStats(
            name=self.name,
            kind=self.kind,
            sent=self._sent,
            retried=self._retried,
            dropped=sum(self._dropped.values()),
            dropped_by_reason=dict(self._dropped),
            queued=queued,
            active_alerts=len(self._active),
            last_error=self._last_error,
            last_error_at=self._last_error_at,
            last_sent_at=self._last_sent_at,
        )

    def __repr__(self) -> str:
        extra = self.describe()
        parts = [f"name={self.name!r}", self.route.describe()]
        if self.repeat_interval is not None:
            parts.append(f"repeat_interval={self.repeat_interval:g}")
        if extra:
            parts.append(extra)
        return f"{type(self).__name__}({', '.join(parts)})"
