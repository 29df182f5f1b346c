"""When the agent looks for updates: at start, then every ``interval`` with random ``jitter`` (so a fleet of
agents restarted together does not hit the release server together), forever, never failing the agent.

``periodic(check, ...)`` is a coroutine the service runs beside its other tasks; ``check`` is a
blocking callable (it runs in a worker thread: the TUF client and downloads are synchronous) such as
``SelfUpdater.apply``. A failed check is logged in one line and retried at the next tick.
Imports nothing of ours.
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)
DEFAULT_INTERVAL_S = 6 * 3600.0
DEFAULT_JITTER_S = 1800.0


def next_delay(interval_s: float, jitter_s: float, rng: random.Random) -> float:
    return max(1.0, interval_s + rng.uniform(-jitter_s, jitter_s))


async def periodic(check: Callable[[], Any], *, interval_s: float = DEFAULT_INTERVAL_S,
                   jitter_s: float = DEFAULT_JITTER_S, rng: random.Random | None = None,
                   sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                   on_result: Callable[[Any], None] | None = None) -> None:
    rng = rng or random.Random()
    while True:
        try:
            result = await asyncio.to_thread(check)
            if on_result:
                on_result(result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - an update check never stops the agent
            log.warning("update check failed: %s", exc)
        await sleep(next_delay(interval_s, jitter_s, rng))
