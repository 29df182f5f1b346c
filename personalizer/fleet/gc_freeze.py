"""Keep Python's full collections off the event loop of a daemon holding thousands of fleet streams.

At 20,000 streams a full cyclic collection walks every stream's objects (1.4–1.7 s, ``../shared/REFERENCE.md``
§8), frees nothing and blocks the loop; a broadcast's allocations are what trigger one, in the middle of the
broadcast. ``GcFreezer`` watches the stream count every ``check_seconds``: once it has grown by at least
``min_growth`` since the last freeze and then held still for one check (the ramp-up, or a reconnect storm, is
over), it runs a young collection (``gc.collect(1)``: recent garbage is not frozen with the rest) and
``gc.freeze()``: the objects alive now move to the permanent generation, which later collections skip.
When the streams fall below half of what was frozen (many agents gone), or when streams amounting to half
of what was frozen have ended since the freeze at a steady count (churn: agents replaced by their own
reconnect; a replaced stream leaves ~71 cyclic objects, measured with 300 in-process streams, which a frozen
collector never frees), ``gc.unfreeze()`` hands them back and one full collection frees the ended streams'
cycles right then, before a later freeze could freeze them again. So what a freeze keeps of ended streams
is bounded by half of one fleet's streams, at the cost of one full collection per half fleet ended.

``decide`` is the rule (pure); ``GcFreezer`` applies it. The ``gc`` module is process-wide: a daemon has one.
Imports the standard library only.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

FREEZE, UNFREEZE = "freeze", "unfreeze"
MIN_GROWTH = 1000        # streams: below this a full collection is short (about 0.1 s at 1,000 streams)
CHECK_SECONDS = 5.0


def decide(streams: int, previous: int, frozen_at: int, *, min_growth: int = MIN_GROWTH,
           ended: int = 0) -> str | None:
    """What to do now that the count is ``streams`` (``previous`` one check ago, ``frozen_at`` at the last
    freeze, 0 when nothing is frozen; ``ended``: streams ended since that freeze): FREEZE when it grew by
    ``min_growth`` since the freeze and held still for one check; UNFREEZE when it fell below half of what
    was frozen, or when ``ended`` reached half of it and the count held still for one check (churn at a
    steady count, not a storm still under way); else None."""
    # churn unfreezes at a steady count only: during a storm (bench fleet, 19,900 agents connecting with
    # thousands of failed attempts) it ran a full collection of 1.5 s and more at every check
    if frozen_at and (streams < frozen_at // 2 or (ended >= max(1, frozen_at // 2) and streams == previous)):
        return UNFREEZE
    if streams - frozen_at >= min_growth and streams == previous:
        return FREEZE
    return None


@dataclass
class GcFreezer:
    streams: Callable[[], int]             # the streams this process holds now (``len(hub)``)
    min_growth: int = MIN_GROWTH
    ended: Callable[[], int] = lambda: 0   # streams ended so far (``hub.ended``)
    check_seconds: float = CHECK_SECONDS
    frozen_at: int = 0                     # streams at the last freeze; 0: nothing frozen by us
    freezes: int = 0
    last_freeze_seconds: float = 0.0       # how long the last young collection and freeze took
    _previous: int = -1
    _ended_at_freeze: int = 0

    def check(self) -> str | None:
        """One look at the stream count; the action taken (FREEZE, UNFREEZE or None)."""
        n = self.streams()
        action = decide(n, self._previous, self.frozen_at, min_growth=self.min_growth,
                        ended=self.ended() - self._ended_at_freeze)
        self._previous = n
        if action == FREEZE:
            t = time.monotonic()
            gc.collect(1)
            gc.freeze()
            self.last_freeze_seconds = time.monotonic() - t
            self.frozen_at, self.freezes, self._ended_at_freeze = n, self.freezes + 1, self.ended()
            log.info("froze %d objects after the fleet grew to %d streams (%.3f s)", gc.get_freeze_count(), n,
                     self.last_freeze_seconds)
        elif action == UNFREEZE:
            t = time.monotonic()
            gc.unfreeze()
            freed = gc.collect()   # now: the next freeze would freeze the ended streams' cycles again
            log.info("unfroze the collector's objects (%d streams now, %d frozen, %d ended since): %d freed in "
                     "%.3f s", n, self.frozen_at, self.ended() - self._ended_at_freeze, freed, time.monotonic() - t)
            self.frozen_at = 0
        return action

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.check_seconds)
            try:
                self.check()
            except Exception:   # never end the daemon's task over a collector figure
                log.exception("the fleet's collector check failed")

    def stop(self) -> None:
        """Give back what this freezer froze (the daemon stops, or a test ends)."""
        if self.frozen_at:
            gc.unfreeze()
            self.frozen_at = 0
