"""The one CA test double: the real EmbeddedCA (or any connector) with switchable faults, named a test double.

``FaultyCA(inner)`` forwards everything to ``inner`` and can, per switch:

* ``down``: every call raises ``CAUnavailable`` and ``health()`` says so (the CA is unreachable);
* ``unavailable``: only ``issue`` raises ``CAUnavailable`` (a timeout at issuance; health stays good);
* ``lose_answers`` (a count): ``issue`` issues for real, then raises as if the answer was lost;
* ``refuse`` (a count): ``issue`` raises ``InvalidRequest`` (a final refusal: the request FAILS);
* ``slow`` (a count): ``issue`` waits ``slow_seconds`` and then fails as a timeout;
* ``delay`` (seconds): every ``issue`` waits that long before issuing (deliveries overlap).

Counts: ``issue_calls`` (every call that reached issuing) and ``calls`` (the same per request id), ``issued`` (request id → certificates really
issued), ``change_calls``. ``reset()`` clears the switches. Used by tests/broker, tests/ops,
tests/store and benchmarks/renew_faults.
"""
from __future__ import annotations

import asyncio

from personalizer.ca.base import CAHealth
from personalizer.errors import CAUnavailable, InvalidRequest


class FaultyCA:
    def __init__(self, inner, *, slow_seconds: float = 1.0):
        self.inner = inner
        self.name = inner.name
        self.slow_seconds = slow_seconds
        self.issue_calls = 0
        self.change_calls = 0
        self.issued: dict[str, int] = {}
        self.calls: dict[str, int] = {}    # request id → issue calls that reached the CA
        self.reset()

    def reset(self) -> None:
        self.down = self.unavailable = False
        self.lose_answers = self.refuse = self.slow = 0
        self.delay = 0.0

    def __getattr__(self, name):   # everything else (attach_registry, open, find_issued ...) is the real CA's
        return getattr(self.inner, name)

    def _check(self) -> None:
        if self.down:
            raise CAUnavailable("CA unreachable (test double)")

    async def open(self):
        await self.inner.open()
        return self

    def chain_der(self):
        return self.inner.chain_der()

    async def issue(self, profile, csr, subject, request_id):
        self._check()
        if self.refuse:
            self.refuse -= 1
            raise InvalidRequest("csr_der", "refused by the CA (test double)")
        if self.unavailable:
            raise CAUnavailable("CA timeout (test double)")
        if self.slow:
            self.slow -= 1
            await asyncio.sleep(self.slow_seconds)
            raise CAUnavailable("CA timeout (test double)")
        self.issue_calls += 1
        self.calls[request_id] = self.calls.get(request_id, 0) + 1
        if self.delay:
            await asyncio.sleep(self.delay)
        issued = await self.inner.issue(profile, csr, subject, request_id)
        self.issued[request_id] = self.issued.get(request_id, 0) + 1
        if self.lose_answers:
            self.lose_answers -= 1
            raise CAUnavailable("connection reset after the CA answered (test double)")
        return issued

    async def find_issued(self, request_id):
        self._check()
        return await self.inner.find_issued(request_id)

    async def status(self, ref):
        return await self.inner.status(ref)

    async def suspend(self, ref):
        self._check()
        self.change_calls += 1
        return await self.inner.suspend(ref)

    async def reactivate(self, ref):
        self._check()
        self.change_calls += 1
        return await self.inner.reactivate(ref)

    async def revoke(self, ref, reason):
        self._check()
        self.change_calls += 1
        return await self.inner.revoke(ref, reason)

    async def health(self):
        if self.down:
            return CAHealth(self.name, False, "down (test double)")
        return await self.inner.health()

    async def close(self):
        await self.inner.close()


__all__ = ["FaultyCA"]
