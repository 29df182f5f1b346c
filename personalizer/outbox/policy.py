"""Retry and circuit-breaker policy for the relay: pure state, the clock passed in.

``RetryPolicy.delay(attempt)`` is exponential backoff with full jitter built on
tenacity's ``wait_random_exponential`` (the relay persists the result as the
outbox row's ``next_attempt_at``, so the schedule survives restarts).

``CircuitBreaker`` has three states::

    closed ──(failure_threshold consecutive failures)──▶ open
    open ──(reset_seconds elapsed)──▶ half-open: one health() probe
    half-open ──probe ok──▶ closed        half-open ──probe fails──▶ open

While open nothing is sent to the CA. Imports nothing of ours.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import tenacity

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


@dataclass(frozen=True)
class RetryPolicy:
    initial_seconds: float = 1.0     # first retry after up to this (jittered)
    max_seconds: float = 300.0       # cap of one backoff
    multiplier: float = 2.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        wait = tenacity.wait_random_exponential(multiplier=self.initial_seconds, max=self.max_seconds,
                                                exp_base=self.multiplier)
        state = tenacity.RetryCallState(None, None, (), {})
        state.attempt_number = max(1, attempt)
        if rng is not None:   # deterministic tests
            high = min(self.max_seconds, self.initial_seconds * self.multiplier ** (max(1, attempt) - 1))
            return rng.uniform(0, high)
        return wait(state)


@dataclass
class CircuitBreaker:
    failure_threshold: int = 5
    reset_seconds: float = 30.0
    state: str = CLOSED
    failures: int = 0
    opened_at: float = 0.0
    transitions: list[tuple[float, str]] = field(default_factory=list)

    def _to(self, state: str, now: float) -> None:
        if state != self.state:
            self.state = state
            self.transitions.append((now, state))

    def allow(self, now: float) -> bool:
        """May a request go to the CA now? In open state, after reset_seconds, move to half-open."""
        if self.state == OPEN and now - self.opened_at >= self.reset_seconds:
            self._to(HALF_OPEN, now)
        return self.state == CLOSED

    def needs_probe(self, now: float) -> bool:
        self.allow(now)
        return self.state == HALF_OPEN

    def success(self, now: float) -> None:
        self.failures = 0
        self._to(CLOSED, now)

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.state == HALF_OPEN or self.failures >= self.failure_threshold:
            self.opened_at = now
            self._to(OPEN, now)
