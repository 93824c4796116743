"""_backoff: capped exponential delays, jitter that only ever shortens them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from xnai_core import _backoff


def test_doubles_from_base_and_stops_at_the_cap() -> None:
    """10, 20, 40 ... capped at 300 (Kubernetes' CrashLoopBackOff), 0 before the first retry."""
    delays = [_backoff.capped(n, base=10.0, cap=300.0) for n in range(8)]
    assert delays == [0.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
    assert _backoff.capped(10**9, base=10.0, cap=300.0) == 300.0


def test_full_jitter_is_the_default_and_equal_jitter_keeps_half() -> None:
    assert _backoff.delay(3, base=1.0, cap=60.0, rand=0.0) == 4.0
    assert _backoff.delay(3, base=1.0, cap=60.0, rand=0.75) == 1.0
    assert _backoff.delay(3, base=1.0, cap=60.0, rand=0.5, jitter=0.5) == 3.0
    assert _backoff.delay(3, base=1.0, cap=60.0, rand=0.999, jitter=0.0) == 4.0


@given(
    retry=st.integers(min_value=-5, max_value=10**6),
    base=st.floats(min_value=1e-3, max_value=1e3),
    extra=st.floats(min_value=0.0, max_value=1e4),
    rand=st.floats(min_value=-1.0, max_value=2.0),
    jitter=st.floats(min_value=-1.0, max_value=2.0),
)
def test_delay_is_never_negative_nor_beyond_the_cap(
    retry: int, base: float, extra: float, rand: float, jitter: float
) -> None:
    cap = base + extra
    value = _backoff.delay(retry, base=base, cap=cap, rand=rand, jitter=jitter)
    assert 0.0 <= value <= _backoff.capped(retry, base=base, cap=cap) <= cap


@given(
    base=st.floats(min_value=1e-3, max_value=1e3),
    extra=st.floats(min_value=0.0, max_value=1e4),
    retry=st.integers(min_value=1, max_value=200),
)
def test_capped_never_shrinks_from_one_retry_to_the_next(
    base: float, extra: float, retry: int
) -> None:
    cap = base + extra
    assert _backoff.capped(retry, base=base, cap=cap) <= _backoff.capped(
        retry + 1, base=base, cap=cap
    )
