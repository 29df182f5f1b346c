"""The service's periodic update check: at start, then on a jittered interval; failures never stop it."""
from __future__ import annotations

import asyncio
import random

import pytest

from agent.updates.schedule import next_delay, periodic


def test_checks_at_start_then_on_a_jittered_interval_and_survives_failures():
    calls, delays = [], []

    def check():
        calls.append(len(calls))
        if len(calls) == 2:
            raise RuntimeError("the release server is down")
        return "up-to-date"

    async def fake_sleep(d):
        delays.append(d)
        if len(delays) == 4:
            raise asyncio.CancelledError

    results = []
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(periodic(check, interval_s=100, jitter_s=10, rng=random.Random(1), sleep=fake_sleep,
                             on_result=results.append))
    assert calls == [0, 1, 2, 3]                      # the failed second check did not stop the loop
    assert results == ["up-to-date"] * 3
    assert all(90 <= d <= 110 for d in delays) and len(set(delays)) == 4


def test_the_delay_is_never_below_a_second():
    assert next_delay(0, 100, random.Random(0)) >= 1.0
