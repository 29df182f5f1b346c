"""The decisions of a rollout, as pure functions of its spec, its targets' counts and the time.

``RolloutSpec`` (what central IT asked for, validated by ``validate``), ``current_rate`` (constant, or
exponential: ``rate × factor^(successes // grow_after)``, capped at ``MAX_RATE``), ``tripped`` (the
first abort criterion met: its kind's share of the devices executed ≥ the threshold, once at least
``min_executed`` finished; a success without a valid attestation counts as failed), ``in_window``
(daily UTC windows, wrapping past midnight), ``send_budget`` (how many may be sent now given the
sends of the last minute). Imports nothing of ours but ``personalizer.errors``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from personalizer.errors import InvalidRequest

MAX_RATE = 1000.0            # commands per minute (the richest public service's cap)
MAX_TARGETS = 100_000
FAILURE_KINDS = ("failed", "rejected", "timed_out", "any")
# target states
WAITING, SENT, SUCCEEDED, FAILED, REJECTED, TIMED_OUT, CANCELLED = (
    "waiting", "sent", "succeeded", "failed", "rejected", "timed_out", "cancelled")
EXECUTED = (SUCCEEDED, FAILED, REJECTED, TIMED_OUT)
# rollout states
RUNNING, PAUSED, R_CANCELLED, ABORTED, COMPLETED = "running", "paused", "cancelled", "aborted", "completed"
ACTIVE = (RUNNING, PAUSED)


@dataclass(frozen=True)
class Criterion:
    kind: str
    threshold_percent: float
    min_executed: int


@dataclass(frozen=True)
class RolloutSpec:
    name: str
    release: str
    chamber: str = ""
    model: str = ""
    firmware_version: str = ""
    token_release: str = ""
    stations: tuple[str, ...] = ()
    group_size: int = 0
    rate_per_minute: float = 60.0
    rate_factor: float = 1.0
    grow_after_successes: int = 0
    abort: tuple[Criterion, ...] = ()
    timeout_seconds: int = 3600
    windows: tuple[tuple[int, int], ...] = ()   # (start_minute, end_minute) UTC

    def to_json(self) -> dict:
        return {**self.__dict__, "stations": list(self.stations),
                "abort": [c.__dict__ for c in self.abort], "windows": [list(w) for w in self.windows]}

    @classmethod
    def from_json(cls, d: dict) -> "RolloutSpec":
        return cls(**{**d, "stations": tuple(d["stations"]), "abort": tuple(Criterion(**c) for c in d["abort"]),
                      "windows": tuple(tuple(w) for w in d["windows"])})


def validate(s: RolloutSpec) -> RolloutSpec:
    if not s.release:
        raise InvalidRequest("release", "name the token release to install")
    if not (s.chamber or s.model or s.firmware_version or s.token_release or s.stations):
        raise InvalidRequest("filter", "give at least one filter (chamber, model, firmware, release) or stations; "
                                       "a rollout to every device must say so with a filter")
    if not 1 <= s.rate_per_minute <= MAX_RATE or not math.isfinite(s.rate_per_minute):
        raise InvalidRequest("rate_per_minute", f"between 1 and {MAX_RATE:g} commands a minute")
    if s.rate_factor < 1 or s.rate_factor > 10 or not math.isfinite(s.rate_factor):
        raise InvalidRequest("rate_factor", "between 1 (constant rate) and 10")
    if s.rate_factor > 1 and s.grow_after_successes < 1:
        raise InvalidRequest("grow_after_successes", "an exponential rate grows after N successes: give N ≥ 1")
    if not 60 <= s.timeout_seconds <= 7 * 86400:
        raise InvalidRequest("timeout_seconds", "between 60 s and 7 days")
    for c in s.abort:
        if c.kind not in FAILURE_KINDS:
            raise InvalidRequest("abort.kind", f"one of {', '.join(FAILURE_KINDS)}")
        if not 0 < c.threshold_percent <= 100:
            raise InvalidRequest("abort.threshold_percent", "above 0 and at most 100")
        if c.min_executed < 1:
            raise InvalidRequest("abort.min_executed", "at least 1 (judge no rate on zero devices)")
    for start, end in s.windows:
        if not (0 <= start < 1440 and 0 <= end < 1440) or start == end:
            raise InvalidRequest("windows", "minutes after midnight UTC, 0..1439, start ≠ end")
    if len(s.stations) > MAX_TARGETS:
        raise InvalidRequest("stations", f"at most {MAX_TARGETS}")
    return s


def current_rate(s: RolloutSpec, successes: int) -> float:
    if s.rate_factor <= 1 or s.grow_after_successes < 1:
        return s.rate_per_minute
    steps = successes // s.grow_after_successes
    return min(MAX_RATE, s.rate_per_minute * s.rate_factor ** min(steps, 64))


def tripped(s: RolloutSpec, counts: dict[str, int]) -> str | None:
    """The reason the rollout must stop, or None."""
    executed = sum(counts.get(k, 0) for k in EXECUTED)
    for c in s.abort:
        if executed < c.min_executed:
            continue
        bad = (executed - counts.get(SUCCEEDED, 0)) if c.kind == "any" else counts.get(c.kind, 0)
        share = 100.0 * bad / executed
        if share >= c.threshold_percent:
            return (f"abort criterion {c.kind} ≥ {c.threshold_percent:g}% tripped: {bad} of {executed} executed "
                    f"({share:.0f}%)")
    return None


def in_window(windows, minute_of_day: int) -> bool:
    if not windows:
        return True
    for start, end in windows:
        if (start <= minute_of_day < end) if start < end else (minute_of_day >= start or minute_of_day < end):
            return True
    return False


def send_budget(rate_per_minute: float, sent_last_minute: int) -> int:
    return max(0, math.floor(rate_per_minute) - sent_last_minute)
