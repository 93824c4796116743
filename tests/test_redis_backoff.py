"""The shared circuit's reconnect backoff (redis-py's equal jitter): the delays
docs/redis.md states, 50 ms doubling to 5 s, at least half of each step waited."""

from __future__ import annotations

import pytest

from xnai_core.circuit.redis_link import backoff


@pytest.mark.parametrize("failures", [1, 2, 3, 7, 8, 30, 10_000])
def test_reconnect_waits_half_to_all_of_a_step_doubling_from_50_ms_to_5_s(failures: int) -> None:
    step = min(5.0, 0.05 * 2.0 ** min(failures - 1, 100))
    delays = [backoff(failures) for _ in range(500)]
    assert all(step / 2 <= delay <= step for delay in delays)
    assert max(delays) - min(delays) > step / 10  # jittered, not one fixed delay
