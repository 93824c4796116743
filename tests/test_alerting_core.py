"""The delivery core every sink shares: routing, order, retries, the queue bound, repeats, close."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.alerting_helpers import (
    RecordingSink,
    SleepRecorder,
    alert,
    delivered_in_virtual_time,
    iter_notes,
    resolved,
)
from tests.helpers import run_virtual
from xnai_core import Alert
from xnai_core.alerting import DeliveryError


def test_min_severity_routes_raises_and_resolves_follow_their_raise() -> None:
    """A warning skips a critical-only sink; a resolve (severity info) follows its raise."""

    warn = alert(kind="success_rate", severity="warning")
    crit = alert(kind="status")
    sink = RecordingSink(min_severity="critical")
    assert delivered_in_virtual_time(sink, warn, crit, resolved(warn), resolved(crit)) == [
        ("rag_api:status", "firing", 0),
        ("rag_api:status", "resolved", 0),
    ]


def test_services_and_exclude_services_choose_what_a_sink_takes() -> None:
    """``services`` keeps only those; ``exclude_services`` removes some."""

    async def scenario() -> tuple[list[str], list[str]]:
        only = RecordingSink(services=["rag_api"])
        but = RecordingSink(exclude_services=["redis"])
        for service in ("rag_api", "redis", "postgres"):
            only.submit(alert(service))
            but.submit(alert(service))
        await only.drain()
        await but.drain()
        return [n.raised.service for n in only.delivered], [n.raised.service for n in but.delivered]

    assert run_virtual(scenario()) == (["rag_api"], ["rag_api", "postgres"])


def test_a_duplicate_raise_and_an_unknown_resolve_send_nothing() -> None:
    """The same alert through the monitor and the recovery manager pages once."""

    raised = alert(kind="manual_intervention")
    other = resolved(alert(service="other"))
    sink = RecordingSink()
    assert delivered_in_virtual_time(
        sink, raised, raised, other, resolved(raised), resolved(raised)
    ) == [
        ("rag_api:manual_intervention", "firing", 0),
        ("rag_api:manual_intervention", "resolved", 0),
    ]


def test_raise_and_resolve_stay_in_order_through_retries() -> None:
    """A raise retried three times is still delivered before its resolve."""

    sink = RecordingSink()
    sink.outcomes.extend(DeliveryError("HTTP 503", retryable=True) for _ in range(3))
    raised = alert()
    notes = delivered_in_virtual_time(sink, raised, resolved(raised))
    assert notes == [("rag_api:status", "firing", 0), ("rag_api:status", "resolved", 0)]
    assert sink.stats().retried == 3


def test_backoff_is_exponential_with_jitter_up_to_backoff_max() -> None:
    """Delays double from backoff_base, keep at least half, and stop growing at backoff_max."""
    sleep = SleepRecorder()

    async def scenario() -> None:
        sink = RecordingSink(
            sleep=sleep, random=lambda: 0.0, backoff_base=1.0, backoff_max=8.0, max_attempts=7
        )
        sink.outcomes.extend(DeliveryError("refused", retryable=True) for _ in range(6))
        sink.submit(alert())
        await sink.drain()

    run_virtual(scenario())
    assert sleep.delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]

    low = SleepRecorder()

    async def jittered() -> None:
        sink = RecordingSink(sleep=low, random=lambda: 1.0, backoff_base=1.0, max_attempts=3)
        sink.outcomes.extend(DeliveryError("refused", retryable=True) for _ in range(2))
        sink.submit(alert())
        await sink.drain()

    run_virtual(jittered())
    assert low.delays == [0.5, 1.0]


def test_retry_after_is_honoured_and_capped() -> None:
    """The receiver's Retry-After replaces the backoff, up to max_retry_after."""
    sleep = SleepRecorder()

    async def scenario() -> None:
        sink = RecordingSink(sleep=sleep, max_retry_after=30.0)
        sink.outcomes.append(DeliveryError("HTTP 429", retryable=True, retry_after=7.0))
        sink.outcomes.append(DeliveryError("HTTP 429", retryable=True, retry_after=3600.0))
        sink.submit(alert())
        await sink.drain()

    run_virtual(scenario())
    assert sleep.delays == [7.0, 30.0]


def test_gives_up_after_max_attempts_and_logs_the_alert(caplog: pytest.LogCaptureFixture) -> None:
    """After max_attempts the notification is dropped (gave_up) with an ERROR naming the alert."""
    caplog.set_level(logging.DEBUG, logger="xnai_core.alerting")

    async def scenario() -> RecordingSink:
        sink = RecordingSink(sleep=SleepRecorder(), max_attempts=3)
        sink.outcomes.extend(DeliveryError("slack: HTTP 503", retryable=True) for _ in range(5))
        sink.submit(alert())
        await sink.drain()
        return sink

    sink = run_virtual(scenario())
    stats = sink.stats()
    assert (
        stats.sent,
        stats.retried,
        stats.dropped,
        stats.dropped_by_reason["gave_up"],
    ) == (0, 2, 1, 1)
    assert len(sink.attempts) == 3
    assert stats.last_error == "slack: HTTP 503"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "'rag_api:status'" in errors[0].getMessage()
    assert "3 attempt(s)" in errors[0].getMessage()
    assert errors[0].__dict__["xnai.alert_key"] == "rag_api:status"


def test_a_rejection_is_not_retried() -> None:
    """A non-retryable failure (a 4xx) is dropped at once as rejected."""

    async def scenario() -> RecordingSink:
        sink = RecordingSink(sleep=SleepRecorder())
        sink.outcomes.append(DeliveryError("HTTP 400", retryable=False))
        sink.submit(alert())
        await sink.drain()
        return sink

    sink = run_virtual(scenario())
    assert len(sink.attempts) == 1
    assert (sink.stats().dropped_by_reason) == {
        "queue_full": 0,
        "rejected": 1,
        "gave_up": 0,
        "shutdown": 0,
    }


def test_an_attempt_is_bounded_by_timeout_and_retried() -> None:
    """A send that hangs is cut off at ``timeout`` and tried again."""

    async def scenario() -> tuple[int, str | None, int]:
        sink = RecordingSink(timeout=2.0, sleep=SleepRecorder(), max_attempts=2)
        sink.hang = asyncio.Event()  # never set: every attempt hangs
        sink.submit(alert())
        await sink.drain()
        return len(sink.attempts), sink.stats().last_error, sink.stats().dropped

    assert run_virtual(scenario()) == (2, "timed out after 2s", 1)


def test_an_unexpected_exception_fails_the_attempt_without_its_text() -> None:
    """A bug in send is a rejection, reported by type only (its text may hold anything)."""

    class Broken(RecordingSink):
        async def send(self, note: object) -> None:
            raise RuntimeError("https://hooks.example/secret-path")

    async def scenario() -> Broken:
        sink = Broken()
        sink.submit(alert())
        await sink.drain()
        return sink

    stats = run_virtual(scenario()).stats()
    assert (stats.last_error, stats.dropped_by_reason["rejected"]) == ("unexpected RuntimeError", 1)


def test_queue_bound_holds_and_overflow_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    """With the destination stuck, at most queue_size wait; the rest are dropped, one WARNING."""
    caplog.set_level(logging.WARNING, logger="xnai_core.alerting")

    async def scenario() -> tuple[int, int, int]:
        sink = RecordingSink(queue_size=5, timeout=1000.0)
        sink.hang = asyncio.Event()
        for index in range(50):
            sink.submit(alert(service=f"svc{index}"))
            await asyncio.sleep(0)
        stats = sink.stats()
        await sink.aclose(timeout=0)
        return stats.queued, stats.dropped_by_reason["queue_full"], len(sink.attempts)

    queued, dropped, attempts = run_virtual(scenario())
    assert queued == 6  # five waiting and one in flight
    assert dropped == 44
    assert attempts == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "queue full" in warnings[0].getMessage()


async def full_queue() -> tuple[RecordingSink, asyncio.Event, tuple[Alert, Alert, Alert]]:
    """A sink of queue_size 2 with ``first`` in flight (hung until the event) and two raises
    queued."""
    sink = RecordingSink(queue_size=2)
    sink.hang = hang = asyncio.Event()
    first = alert(service="first")
    sink.submit(first)
    await asyncio.sleep(0)  # in flight now
    second, third = alert(service="second"), alert(service="third")
    sink.submit(second)
    sink.submit(third)
    return sink, hang, (first, second, third)


def test_a_resolve_takes_the_place_of_a_queued_raise_when_the_queue_is_full() -> None:
    """A resolve closes a page already seen; a queued raise has told no one yet, so it gives way."""

    async def scenario() -> list[tuple[str, str, int]]:
        sink, hang, (first, _second, third) = await full_queue()
        sink.submit(resolved(first))  # the queue is full: third's raise gives way
        sink.submit(resolved(third))  # third was never announced: nothing to resolve
        hang.set()
        await sink.drain()
        return list(iter_notes(sink))

    assert run_virtual(scenario()) == [
        ("first:status", "firing", 0),
        ("second:status", "firing", 0),
        ("first:status", "resolved", 0),
    ]


def test_a_full_queue_of_resolves_still_takes_the_resolve_of_a_page_that_was_shown() -> None:
    """Four pages were delivered; the destination hangs while they resolve, and the queue
    (2) fills with resolves, with no raise to give way: the last resolve is queued beyond
    the bound (it takes the place its alert held among the active ones), not dropped, so
    no page stays open for ever (before: dropped as queue_full)."""

    async def scenario() -> tuple[list[tuple[str, str, int]], int, int]:
        sink = RecordingSink(queue_size=2)
        raised = [alert(service=name) for name in ("a", "b", "c", "d")]
        for item in raised:
            sink.submit(item)
            await sink.drain()
        sink.hang = hang = asyncio.Event()
        sink.submit(resolved(raised[0]))
        await asyncio.sleep(0)  # in flight now
        for item in raised[1:]:
            sink.submit(resolved(item))
        queued = sink.stats().queued
        hang.set()
        await sink.drain()
        ends = [note for note in iter_notes(sink) if note[1] == "resolved"]
        return ends, queued, sink.stats().dropped

    ends, queued, dropped = run_virtual(scenario())
    assert ends == [(f"{name}:status", "resolved", 0) for name in ("a", "b", "c", "d")]
    assert (queued, dropped) == (4, 0)


def test_a_sink_whose_send_never_suspends_still_lets_the_loop_run() -> None:
    """A sink of one's own whose ``send`` awaits nothing: the loop still turns between
    deliveries, so a health check is not held up by a queue of 200 (before: the whole
    queue went out in one turn of the loop)."""

    async def scenario() -> list[int]:
        sink = RecordingSink()
        seen: list[int] = []

        async def other_task() -> None:
            for _ in range(1000):
                seen.append(len(sink.delivered))
                if len(sink.delivered) == 200:
                    return
                await asyncio.sleep(0)

        for index in range(200):
            sink.submit(alert(service=f"svc{index}"))
        await asyncio.gather(other_task(), sink.drain())
        return seen

    seen = run_virtual(scenario())
    assert len(set(seen)) > 100


def test_a_worker_cancelled_from_outside_loses_nothing() -> None:
    """The sink's task is cancelled by something else than ``aclose()`` (a loop's shutdown
    cancelling every task) mid-delivery: the next alert starts a new one, which delivers
    the interrupted notice first (before: it was lost; and a ``drain()`` called before the
    next alert spun the loop for ever, since the stale in-flight notice never cleared)."""

    async def scenario() -> list[tuple[str, str, int]]:
        sink = RecordingSink()
        sink.hang = asyncio.Event()
        sink.submit(alert(service="first"))
        await asyncio.sleep(0)  # in flight, hung
        worker = sink._worker
        assert worker is not None
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        sink.hang = None
        sink.submit(alert(service="second"))
        for _ in range(100):
            if len(sink.delivered) == 2:
                break
            await asyncio.sleep(0.01)
        await sink.drain()
        return list(iter_notes(sink))

    assert run_virtual(scenario()) == [
        ("first:status", "firing", 0),
        ("second:status", "firing", 0),
    ]


def test_a_full_queue_cancels_a_resolve_with_its_unsent_raise() -> None:
    """A resolve whose own raise is still queued (nobody was told): neither is sent."""

    async def scenario() -> tuple[list[tuple[str, str, int]], int]:
        sink, hang, (_first, second, _third) = await full_queue()
        sink.submit(resolved(second))  # second's raise is queued: both go
        hang.set()
        await sink.drain()
        return list(iter_notes(sink)), sink.stats().dropped_by_reason["queue_full"]

    notes, dropped = run_virtual(scenario())
    assert notes == [("first:status", "firing", 0), ("third:status", "firing", 0)]
    assert dropped == 2


def test_repeat_interval_reminds_until_resolved() -> None:
    """An alert that stays active is sent again every repeat_interval; its resolve stops that."""

    async def scenario() -> list[tuple[str, str, int]]:
        sink = RecordingSink(repeat_interval=60.0)
        raised = alert()
        sink.submit(raised)
        await asyncio.sleep(60 * 3 + 30)  # virtual time: three reminders are due
        sink.submit(resolved(raised))
        await sink.drain()
        await asyncio.sleep(600)
        return list(iter_notes(sink))

    assert run_virtual(scenario()) == [
        ("rag_api:status", "firing", 0),
        ("rag_api:status", "firing", 1),
        ("rag_api:status", "firing", 2),
        ("rag_api:status", "firing", 3),
        ("rag_api:status", "resolved", 0),
    ]


def test_repeat_is_off_by_default_and_the_worker_task_ends_when_idle() -> None:
    """Without repeat_interval nothing is sent again, and no task is left running."""

    async def scenario() -> tuple[int, bool]:
        sink = RecordingSink()
        sink.submit(alert())
        await sink.drain()
        await asyncio.sleep(3600)
        worker = sink._worker
        return len(sink.delivered), worker is None or worker.done()

    assert run_virtual(scenario()) == (1, True)


def test_aclose_flushes_what_is_queued() -> None:
    """aclose() delivers queued notifications before returning."""

    async def scenario() -> int:
        sink = RecordingSink()
        for index in range(10):
            sink.submit(alert(service=f"svc{index}"))
        await sink.aclose(timeout=5)
        return len(sink.delivered)

    assert run_virtual(scenario()) == 10


def test_aclose_keeps_its_deadline_with_a_hung_destination(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stuck send is cancelled at the deadline; the undelivered are counted and logged."""
    caplog.set_level(logging.ERROR, logger="xnai_core.alerting")

    async def scenario() -> tuple[float, int, int]:
        sink = RecordingSink(timeout=1000.0)
        sink.hang = asyncio.Event()
        for index in range(3):
            sink.submit(alert(service=f"svc{index}"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        await sink.aclose(timeout=2.0)
        took = loop.time() - started
        sink.submit(alert(service="late"))  # after close: dropped, never raised
        stats = sink.stats()
        return took, stats.dropped_by_reason["shutdown"], stats.queued

    took, dropped, queued = run_virtual(scenario())
    assert 2.0 <= took < 2.5
    assert (dropped, queued) == (4, 0)
    assert {"svc0:status", "svc1:status", "svc2:status", "late:status"} == {
        r.__dict__["xnai.alert_key"] for r in caplog.records
    }


def test_a_retry_past_the_close_deadline_is_not_waited_for() -> None:
    """During aclose(), a backoff that would end after the deadline gives up at once."""
    sleep = SleepRecorder()

    async def scenario() -> tuple[int, int]:
        sink = RecordingSink(sleep=sleep, backoff_base=10.0)
        sink.outcomes.extend(DeliveryError("refused", retryable=True) for _ in range(5))
        sink.submit(alert())
        await sink.aclose(timeout=1.0)
        return len(sink.attempts), sink.stats().dropped_by_reason["shutdown"]

    assert run_virtual(scenario()) == (1, 1)
    assert sleep.delays == []


def test_calling_a_sink_never_raises() -> None:
    """Whatever it is handed, a sink's handler returns None and logs."""

    async def scenario() -> tuple[object, object]:
        sink = RecordingSink()
        return sink.submit("not an alert"), await sink("not an alert")  # type: ignore[arg-type,func-returns-value]

    assert run_virtual(scenario()) == (None, None)


async def test_an_alert_from_another_thread_reaches_the_loop() -> None:
    """Called from a thread with no loop, the sink hands the alert to its own loop."""
    sink = RecordingSink()
    sink.submit(alert(service="first"))  # binds the sink to this loop
    await sink.drain()
    thread = threading.Thread(target=sink.submit, args=(alert(service="from_thread"),))
    thread.start()
    thread.join()
    for _ in range(500):
        if len(sink.delivered) == 2:
            break
        await asyncio.sleep(0.01)
    assert [n.raised.service for n in sink.delivered] == ["first", "from_thread"]
    await sink.aclose()


def test_stats_are_json_ready() -> None:
    """stats().as_dict() serialises; it names the sink and its kind, nothing else about it."""

    async def scenario() -> dict[str, object]:
        sink = RecordingSink(name="ops")
        sink.submit(alert())
        await sink.drain()
        return sink.stats().as_dict()

    stats = run_virtual(scenario())
    json.dumps(stats)
    assert (
        stats["name"],
        stats["kind"],
        stats["sent"],
        stats["retried"],
        stats["dropped"],
        stats["active_alerts"],
    ) == ("ops", "recording", 1, 0, 0, 1)


@pytest.mark.parametrize(
    ("options", "error", "text"),
    [
        ({"min_severity": "page"}, ValueError, "'min_severity' must be one of"),
        ({"queue_size": 0}, ValueError, "'queue_size' must be >= 1: 0"),
        ({"max_attempts": True}, TypeError, "'max_attempts' must be an int: True"),
        ({"services": "rag_api"}, TypeError, "'services' must be a collection"),
        ({"repeat_interval": -1}, ValueError, "'repeat_interval' must be > 0 seconds: -1"),
        ({"timeout": 0}, ValueError, "'timeout' must be > 0 seconds: 0"),
        ({"name": ""}, TypeError, "'name' must be a non-empty str"),
    ],
)
def test_bad_options_are_refused_with_a_clear_message(
    options: dict[str, object], error: type[Exception], text: str
) -> None:
    """Errors name the argument, the rule and the value."""
    with pytest.raises(error, match=text.replace("(", r"\(")):
        RecordingSink(**options)


def test_an_alert_of_unknown_severity_cannot_exist() -> None:
    """Routing relies on Alert's own check of severity."""
    with pytest.raises(ValueError, match="'severity' must be one of"):
        Alert(service="s", kind="k", severity="page", message="m")  # type: ignore[arg-type]


# --- a randomized run: many alerts, failures and overflows at once --------------------------

_KEYS = ("a", "b", "c")
_step = st.one_of(
    st.tuples(st.just("raise"), st.sampled_from(_KEYS)),
    st.tuples(st.just("resolve"), st.sampled_from(_KEYS)),
    st.tuples(st.just("fail"), st.sampled_from(("retry", "reject"))),
    st.tuples(st.just("wait"), st.sampled_from(("0", "1", "30"))),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_step, max_size=40), queue_size=st.integers(1, 4))
# Found by this test: a full queue evicted a's raise for b's resolve but sent a's resolve.
@example(steps=[("raise", "b"), ("wait", "0"), ("raise", "a"), ("resolve", "a")], queue_size=2)
# queue_size=1, a notice in flight and a's resolve waiting: b's resolve (b's raise was sent)
# is queued over the bound, as the docs say (the test's bound had left such resolves out).
@example(
    steps=[
        ("raise", "b"),
        ("wait", "0"),
        ("raise", "a"),
        ("wait", "1"),
        ("resolve", "a"),
        ("resolve", "b"),
    ],
    queue_size=1,
)
def test_invariants_hold_under_random_alerts_failures_and_overflows(
    steps: list[tuple[str, str]], queue_size: int
) -> None:
    """Per alert, first notices alternate raise/resolve starting with a raise; every notice
    filed is sent or counted dropped; the queue never holds more than its bound."""

    async def scenario() -> None:
        sink = RecordingSink(
            queue_size=queue_size, max_attempts=3, sleep=SleepRecorder(), repeat_interval=20.0
        )
        sink.takes = 0.5  # a slow destination: notices pile up between waits
        active: dict[str, Alert] = {}
        worst = 0
        for action, arg in steps:
            if action == "raise" and arg not in active:
                active[arg] = alert(service=arg)
                sink.submit(active[arg])
            elif action == "resolve" and arg in active:
                sink.submit(resolved(active.pop(arg)))
            elif action == "fail":
                retryable = arg == "retry"
                sink.outcomes.append(DeliveryError(arg, retryable=retryable))
            elif action == "wait":
                await asyncio.sleep(float(arg))
            worst = max(worst, sink.stats().queued)
        for item in list(active.values()):
            sink.submit(resolved(item))
        await sink.drain()
        await sink.aclose(timeout=1.0)

        # The bound, the one in flight, and resolves queued over the bound (docs/alerting.md,
        # "Full queue": a resolve no raise can give way to is kept, at most one per alert).
        assert worst <= queue_size + 1 + len(_KEYS)
        attempted: dict[str, list[str]] = {}
        seen: set[str] = set()
        for note in sink.attempts:
            if note.repeat or note.delivery_id in seen:
                continue  # reminders and retries
            seen.add(note.delivery_id)
            attempted.setdefault(note.key, []).append(note.event)
        for events in attempted.values():
            assert events[0] == "firing"
            assert all(a != b for a, b in itertools.pairwise(events))
        stats = sink.stats()
        # Each notice attempted ends sent or counted dropped; a queue-full drop never ran.
        notes_attempted = len({n.delivery_id for n in sink.attempts})
        assert stats.sent == len(sink.delivered)
        assert stats.sent + stats.dropped - stats.dropped_by_reason["queue_full"] == notes_attempted

    run_virtual(scenario())


def test_a_raise_already_tried_is_never_cancelled_by_a_full_queue() -> None:
    """A raise whose first attempt timed out may have arrived: when its resolve meets a full
    queue, an untried raise gives way instead, so the page that may be open is closed."""

    async def scenario() -> tuple[list[tuple[str, str, int]], int]:
        sink = RecordingSink(queue_size=2, random=lambda: 0.0)
        sink.outcomes.append(DeliveryError("timed out", retryable=True))
        first = alert(service="first")
        sink.submit(first)
        await asyncio.sleep(0.1)  # tried once; waiting 1 s for its retry, in the queue
        sink.submit(alert(service="second"))
        sink.submit(resolved(first))
        await sink.drain()
        return list(iter_notes(sink)), sink.stats().dropped_by_reason["queue_full"]

    notes, dropped = run_virtual(scenario())
    assert notes == [("first:status", "firing", 0), ("first:status", "resolved", 0)]
    assert dropped == 1


def test_lanes_keep_each_alerts_order_and_send_criticals_first() -> None:
    """Queued together: the critical and its resolve go before the older warning, and each
    alert's raise still precedes its resolve."""

    async def scenario() -> list[tuple[str, str, int]]:
        sink = RecordingSink(min_severity="info")
        sink.hang = asyncio.Event()
        blocker = alert(service="blocker", severity="info")
        sink.submit(blocker)
        await asyncio.sleep(0)  # in flight
        warning = alert(service="w", severity="warning")
        critical = alert(service="c")
        for item in (warning, resolved(warning), critical, resolved(critical)):
            sink.submit(item)
        sink.hang.set()
        await sink.drain()
        return list(iter_notes(sink))

    assert run_virtual(scenario()) == [
        ("blocker:status", "firing", 0),
        ("c:status", "firing", 0),
        ("c:status", "resolved", 0),
        ("w:status", "firing", 0),
        ("w:status", "resolved", 0),
    ]


def test_adopting_from_a_predecessor_announces_only_what_it_had_not_told() -> None:
    """A sink rebuilt by a reload: the alert its predecessor (same destination) delivered is
    taken over silently, its first reminder a full repeat_interval later; the one still
    untried at the predecessor is announced by the new sink and not by the old."""

    async def scenario() -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
        await asyncio.sleep(1000)  # the process has been up a while
        old = RecordingSink()
        told, untold = alert(service="told"), alert(service="untold")
        old.submit(told)
        await old.drain()
        old.pause()
        old.submit(untold)
        new = RecordingSink(repeat_interval=60.0)
        new.adopt([told, untold], predecessor=old)
        await old.aclose()
        await asyncio.sleep(30)
        early = list(iter_notes(new))
        await asyncio.sleep(40)
        new.submit(resolved(told))
        new.submit(resolved(untold))
        await new.drain()
        await new.aclose()
        return list(iter_notes(old)), [*early, ("--", "--", 0), *list(iter_notes(new))]

    old_notes, new_notes = run_virtual(scenario())
    assert old_notes == [("told:status", "firing", 0)]
    assert new_notes == [
        ("untold:status", "firing", 0),
        ("--", "--", 0),
        ("untold:status", "firing", 0),
        ("told:status", "firing", 1),
        ("untold:status", "firing", 1),
        ("told:status", "resolved", 0),
        ("untold:status", "resolved", 0),
    ]


def test_reminders_keep_coming_while_another_alert_waits_out_a_retry_after() -> None:
    """A warning waits 300 s on the receiver's Retry-After: the critical's reminders (the
    re-posts that keep an alert alive in Alertmanager) still go every 60 s."""

    async def scenario() -> list[tuple[str, str, int]]:
        sink = RecordingSink(min_severity="info", repeat_interval=60.0)
        sink.submit(alert(service="c"))
        await sink.drain()
        sink.outcomes.append(DeliveryError("HTTP 429", retryable=True, retry_after=300.0))
        sink.submit(alert(service="w", severity="warning"))
        await asyncio.sleep(200)
        notes = list(iter_notes(sink))
        await sink.aclose(timeout=0.0)
        return notes

    assert run_virtual(scenario()) == [
        ("c:status", "firing", 0),
        ("c:status", "firing", 1),
        ("c:status", "firing", 2),
        ("c:status", "firing", 3),
    ]


def test_reminders_respect_the_queue_bound() -> None:
    """Reminders due while the queue is full are skipped (the next one comes an interval
    later), so the bound holds."""

    async def scenario() -> int:
        sink = RecordingSink(min_severity="info", repeat_interval=10.0, queue_size=2)
        for service in ("a", "b", "c"):
            sink.submit(alert(service=service))
        await sink.drain()
        sink.hang = asyncio.Event()
        most = 0
        for _ in range(100):
            await asyncio.sleep(1)
            most = max(most, sink.stats().queued)
        sink.hang.set()
        await sink.aclose(timeout=0.0)
        return most

    assert run_virtual(scenario()) <= 2 + 1  # the bound, and the one in flight


def test_a_critical_raise_is_not_crowded_out_by_a_storm_of_warnings() -> None:
    """The queue is full of warnings nobody has seen yet: a critical takes the place of the
    newest of them instead of being dropped; a warning on the full queue is dropped."""

    async def scenario() -> tuple[list[tuple[str, str, int]], int]:
        sink = RecordingSink(queue_size=2, min_severity="info")
        sink.hang = hang = asyncio.Event()
        sink.submit(alert(service="first", severity="warning"))
        await asyncio.sleep(0)  # in flight now
        for service in ("w1", "w2", "w3"):
            sink.submit(alert(service=service, severity="warning"))
        sink.submit(alert(service="db"))
        hang.set()
        await sink.drain()
        return list(iter_notes(sink)), sink.stats().dropped_by_reason["queue_full"]

    notes, dropped = run_virtual(scenario())
    assert notes == [
        ("first:status", "firing", 0),
        ("db:status", "firing", 0),
        ("w1:status", "firing", 0),
    ]
    assert dropped == 2
