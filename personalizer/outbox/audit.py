"""How many refused calls of one identity reach the audit table: a token bucket per identity.

A station (or a stolen station certificate) that floods refused calls wrote
~950 audit rows/s of ~1.2 KB each (issue 10): the disk was the limit. Each
identity may have ``REFUSAL_BURST`` refusals recorded at once and then one
every ``1 / REFUSAL_RATE`` seconds; the refusals not recorded are counted and
the next row that is written says how many were left out, so the trail still
shows the flood, its identity and its duration. Calls are refused all the
same: only the rows are limited. Accepted requests are never limited (their
row is part of the request's own transaction).

Pure: no I/O; the clock is injected. Imports nothing of ours.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

REFUSAL_BURST = 20          # rows an identity may have written at once
REFUSAL_RATE = 1.0          # then rows per second
MAX_IDENTITIES = 4096       # buckets kept (least recently used dropped)


@dataclass
class _Bucket:
    tokens: float
    at: float
    skipped: int = 0


class RefusalLimiter:
    def __init__(self, *, burst: int = REFUSAL_BURST, rate: float = REFUSAL_RATE,
                 clock: Callable[[], float] = time.monotonic, max_identities: int = MAX_IDENTITIES):
        self._burst, self._rate, self._clock, self._max = burst, rate, clock, max_identities
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def admit(self, identity: str) -> int | None:
        """None: do not write this refusal's row. Otherwise write it; the number is how many refusals of
        this identity were left out since its last written row (0 when none)."""
        now = self._clock()
        b = self._buckets.get(identity)
        if b is None:
            b = self._buckets[identity] = _Bucket(float(self._burst), now)
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(identity)
            b.tokens = min(float(self._burst), b.tokens + (now - b.at) * self._rate)
            b.at = now
        if b.tokens < 1.0:
            b.skipped += 1
            return None
        b.tokens -= 1.0
        skipped, b.skipped = b.skipped, 0
        return skipped
