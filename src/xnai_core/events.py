"""Events: what xnai-core tells observers, and the one hook interface that hears it.

Every part emits here: a breaker each call's outcome and each change of state, the
degradation manager each call (who answered), the health monitor each check and
alert, the recovery manager each attempt and escalation. A *hook* is any callable
taking one event (:class:`Hook`); Prometheus, OpenTelemetry and logging adapters
are hooks like any other.

Install hooks once: globally with :func:`install_hooks`, or for one object through
its ``hooks`` attribute (a :class:`HookPoint`), which then ignores the global ones::

    events.install_hooks(my_hook)             # every breaker, monitor, manager
    breaker.hooks.install(other_hook)         # this breaker only

Hooks run synchronously where the event happens, in the caller's task: keep them
short (count, enqueue), never block. A hook's exception is logged and never reaches
the caller. With no hook installed nothing is built: a breaker call pays one
attribute check.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias, runtime_checkable

logger = logging.getLogger("xnai_core.events")

CallKind: TypeAlias = Literal["successful", "failed", "ignored", "timeout", "not_permitted"]
"""How a breaker call ended.

``successful``; ``failed`` (a counted exception); ``timeout`` (the breaker's own
timeout fired); ``ignored`` (an uncounted exception, or the caller cancelled);
``not_permitted`` (the circuit rejected it without calling the function).
"""

CALL_KINDS: tuple[CallKind, ...] = ("successful", "failed", "ignored", "timeout", "not_permitted")


@dataclass(frozen=True, slots=True)
class CallCompleted:
    """A call through a breaker ended.

    ``duration`` is seconds from the call's start to its outcome, the fallback's
    run excluded (see :class:`FallbackUsed`).
    """

    breaker: str
    kind: CallKind
    duration: float


# Built on every breaker call while a hook is installed: the generated __init__ of a
# frozen dataclass calls object.__setattr__ per field (~0.3 us here); setting the
# slots directly makes the same immutable object in about half the time.
_new = object.__new__
_set_breaker = vars(CallCompleted)["breaker"].__set__
_set_kind = vars(CallCompleted)["kind"].__set__
_set_duration = vars(CallCompleted)["duration"].__set__


def call_completed(breaker: str, kind: CallKind, duration: float) -> CallCompleted:
    """``CallCompleted(breaker, kind, duration)``, built the fast way."""
    event: CallCompleted = _new(CallCompleted)
    _set_breaker(event, breaker)
    _set_kind(event, kind)
    _set_duration(event, duration)
    return event


@dataclass(frozen=True, slots=True)
class FallbackUsed:
    """A breaker's fallback answered instead of the protected call.

    ``cause`` is the outcome that led to it; ``duration`` the fallback's own run.
    """

    breaker: str
    cause: Literal["failed", "timeout", "not_permitted"]
    duration: float


@dataclass(frozen=True, slots=True)
class StateChanged:
    """A circuit changed state (``old`` and ``new`` are ``"closed"``, ``"open"``,
    ``"half_open"``). ``remote`` is True when another process made the change and
    this one saw it through the shared store (any other breaker object counts as
    another process, a second breaker of the same name in this one included)."""

    breaker: str
    old: str
    new: str
    reason: str
    remote: bool


@dataclass(frozen=True, slots=True)
class DegradationCall:
    """A degradation manager answered a call for ``service``.

    ``source`` is ``"primary"`` when the primary function answered, else the name of
    the strategy that did, or ``"none"`` when nothing could answer (``ok`` False).
    ``degraded``: the service is in a degraded episode after this call (it stays
    degraded until the primary answers again, cache hits in between included).
    """

    service: str
    source: str
    degraded: bool
    ok: bool
    duration: float


@dataclass(frozen=True, slots=True)
class HealthChecked:
    """A health check of ``service`` ended: ``result`` is its own status, ``status``
    the service's status after hysteresis (both ``HealthStatus`` values)."""

    service: str
    result: str
    status: str
    duration: float


@dataclass(frozen=True, slots=True)
class AlertChanged:
    """An alert about ``service`` was raised (``active``) or resolved (not ``active``).

    ``alert`` is its type (``"consecutive_failures"``, ``"status"``...), ``severity``
    ``"info"``, ``"warning"`` or ``"critical"``.
    """

    service: str
    alert: str
    severity: str
    active: bool


@dataclass(frozen=True, slots=True)
class RecoveryAttempted:
    """A recovery attempt for ``service`` was judged: ``result`` is ``"succeeded"``
    (seen healthy within the grace period), ``"failed"``, or ``"escalated"`` (the
    ``manual_intervention`` action: a person was called). ``duration``: the action's
    own run, in seconds. Dry runs are not reported: nothing ran."""

    service: str
    action: str
    result: str
    attempt: int
    duration: float


@dataclass(frozen=True, slots=True)
class RecoveryEscalated:
    """Automated recovery of ``service`` gave up and asked for a person
    (``escalated``), or the latch was lifted (not ``escalated``)."""

    service: str
    escalated: bool
    reason: str


Event: TypeAlias = (
    CallCompleted
    | FallbackUsed
    | StateChanged
    | DegradationCall
    | HealthChecked
    | AlertChanged
    | RecoveryAttempted
    | RecoveryEscalated
)


class Hook(Protocol):
    """Anything that observes xnai-core: called with each event, synchronously."""

    def __call__(self, event: Event, /) -> None: ...


CallRecorder: TypeAlias = Callable[[CallKind, float], None]
"""Takes one breaker call's outcome: (kind, duration in seconds)."""


@runtime_checkable
class RecordsCalls(Protocol):
    """A hook that takes breaker call outcomes without a :class:`CallCompleted` event.

    Building an event object costs about 0.3 us; an adapter that only counts
    (Prometheus, OpenTelemetry) offers a recorder bound to one breaker instead, and
    that breaker calls it directly. Every other event still comes through
    ``__call__``. A recorder must be quick and should not raise (an exception is
    logged and dropped).
    """

    def __call__(self, event: Event, /) -> None: ...

    def call_recorder(self, breaker: str) -> CallRecorder: ...


Emit: TypeAlias = Callable[[Event], None]


def _call_recorder(hooks: tuple[Hook, ...], breaker: str) -> CallRecorder | None:
    """One recorder for a breaker's calls: direct for hooks that offer one, through
    :class:`CallCompleted` events for the others."""
    recorders: list[CallRecorder] = []
    for hook in hooks:
        if isinstance(hook, RecordsCalls):
            recorders.append(hook.call_recorder(breaker))
        else:
            recorders.append(_through_events(hook, breaker))
    if not recorders:
        return None
    if len(recorders) == 1:
        return recorders[0]

    def record_all(kind: CallKind, seconds: float) -> None:
        for record in recorders:
            try:
                record(kind, seconds)
            except Exception:
                logger.exception("call recorder %r of circuit '%s' failed", record, breaker)

    return record_all


def _through_events(hook: Hook, breaker: str) -> CallRecorder:
    def record(kind: CallKind, seconds: float) -> None:
        hook(call_completed(breaker, kind, seconds))

    return record


def _dispatcher(hooks: tuple[Hook, ...]) -> Emit | None:
    """One callable that hands an event to every hook, or None for no hooks."""
    if not hooks:
        return None
    if len(hooks) == 1:
        (hook,) = hooks

        def emit_one(event: Event) -> None:
            try:
                hook(event)
            except Exception:
                logger.exception("event hook %r failed on %r", hook, type(event).__name__)

        return emit_one

    def emit_all(event: Event) -> None:
        for each in hooks:
            try:
                each(event)
            except Exception:
                logger.exception("event hook %r failed on %r", each, type(event).__name__)

    return emit_all


def _checked(hooks: tuple[object, ...]) -> tuple[Hook, ...]:
    for hook in hooks:
        if not callable(hook):
            raise TypeError(f"a hook must be callable: {hook!r}")
    return hooks  # type: ignore[return-value]


_global_hooks: tuple[Hook, ...] = ()
_points: weakref.WeakSet[HookPoint] = weakref.WeakSet()
# Objects are made in any thread while a scrape (or a metrics publisher thread) lists
# them: a WeakSet copied while another thread adds to it raises RuntimeError.
_points_lock = threading.Lock()


def _all_points() -> list[HookPoint]:
    with _points_lock:
        return list(_points)


class HookPoint:
    """Where one object's events go: its own hooks if installed, else the global ones.

    ``emit`` is None while no hook applies, so an emitter checks it before building
    an event. A breaker's point (``calls_of`` its name) also has ``record_call``,
    set exactly when ``emit`` is: where its call outcomes go. With
    ``recorder_attribute``, the point also keeps that attribute of the owner equal
    to ``record_call`` (one attribute load on the owner's hot path instead of two).
    """

    __slots__ = (
        "__weakref__",
        "_calls_of",
        "_own",
        "_owner",
        "_recorder_attribute",
        "emit",
        "record_call",
    )

    def __init__(
        self,
        owner: object,
        *,
        calls_of: str | None = None,
        recorder_attribute: str | None = None,
    ) -> None:
        self._owner = weakref.ref(owner)
        self._calls_of = calls_of
        self._recorder_attribute = recorder_attribute
        self._own: tuple[Hook, ...] | None = None
        self.emit: Emit | None = None
        self.record_call: CallRecorder | None = None
        self._resolve(_global_hooks)
        with _points_lock:
            _points.add(self)

    def _resolve(self, hooks: tuple[Hook, ...]) -> None:
        if self._calls_of is not None:
            self.record_call = _call_recorder(hooks, self._calls_of)
        self.emit = _dispatcher(hooks)
        owner = self._owner()
        if self._recorder_attribute is not None and owner is not None:
            setattr(owner, self._recorder_attribute, self.record_call)

    def __repr__(self) -> str:
        return f"<HookPoint own={self._own!r} global={_global_hooks!r}>"

    @property
    def owner(self) -> object | None:
        """The object whose events these are (None once it is gone)."""
        return self._owner()

    @property
    def hooks(self) -> tuple[Hook, ...]:
        """The hooks this object's events go to now."""
        return _global_hooks if self._own is None else self._own

    def install(self, *hooks: Hook) -> None:
        """Send this object's events to ``hooks`` only (none: silence it)."""
        self._own = _checked(hooks)
        self._resolve(self._own)

    def uninstall(self) -> None:
        """Follow the global hooks again."""
        self._own = None
        self._resolve(_global_hooks)

    def _global_changed(self) -> None:
        if self._own is None:
            self._resolve(_global_hooks)


def install_hooks(*hooks: Hook) -> None:
    """Send every object's events to ``hooks`` (replacing the global hooks installed
    before; objects with hooks of their own keep them)."""
    global _global_hooks
    _global_hooks = _checked(hooks)
    for point in _all_points():
        point._global_changed()


def add_hook(hook: Hook) -> None:
    """Add ``hook`` to the global hooks (a no-op if it is there already)."""
    if hook not in _global_hooks:
        install_hooks(*_global_hooks, hook)


def remove_hook(hook: Hook) -> None:
    """Remove ``hook`` from the global hooks (a no-op if it is not there)."""
    if hook in _global_hooks:
        install_hooks(*(each for each in _global_hooks if each is not hook))


def get_hooks() -> tuple[Hook, ...]:
    """The global hooks."""
    return _global_hooks


def live_sources() -> Iterator[object]:
    """Every live object that emits events (breakers, monitors, managers).

    Adapters that expose current state (a circuit's state, a service's status) read
    it from these at collection time, so it is right even for changes this process
    only saw (a circuit opened by another process).
    """
    for point in _all_points():
        owner = point._owner()
        if owner is not None:
            yield owner
