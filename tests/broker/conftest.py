"""Fixtures for the broker tests: a deployment, an in-process broker + relay + store around the
real embedded CA wrapped in ``FlakyCA`` (a test double that can be down or lose answers), and
an injected clock."""
from __future__ import annotations

import datetime as dt
import shutil

import pytest

from personalizer import config, deploy
from personalizer.outbox.broker import Broker, IssueInput, RenewalRules
from personalizer.ca.base import CAHealth
from personalizer.errors import CAUnavailable
from personalizer.outbox.policy import CircuitBreaker, RetryPolicy
from personalizer.outbox.relay import Relay
from personalizer.server import build_ca
from personalizer.store import SqliteRequestStore
from personalizer.outbox.windows import ServiceCalendar
from tests.personalizer import helpers

ROME = dt.timezone(dt.timedelta(hours=1))   # CET; the tests pick winter dates


class FakeClock:
    def __init__(self, start: dt.datetime):
        self.t = start.timestamp()

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    def set(self, when: dt.datetime) -> None:
        self.t = when.timestamp()


class FlakyCA:
    """Test double around the real EmbeddedCA: ``down`` makes every call raise CAUnavailable;
    ``lose_answers`` issues for real, then raises as if the answer was lost on the way back."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.down = False
        self.lose_answers = 0
        self.issue_calls = 0
        self.change_calls = 0

    def chain_der(self):
        return self.inner.chain_der()

    def _check(self):
        if self.down:
            raise CAUnavailable("CA unreachable (test double)")

    async def issue(self, profile, csr, subject, request_id):
        self._check()
        self.issue_calls += 1
        issued = await self.inner.issue(profile, csr, subject, request_id)
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


@pytest.fixture(scope="session")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("broker-deploy") / "cns"
    return deploy.init_deployment(root, chamber="RM", station_id="RM-STATION-01", listen="127.0.0.1:0")


class Env:
    """Broker + relay + store + FlakyCA(EmbeddedCA) in this event loop, time from ``clock``."""

    def __init__(self, deployment, tmp_path, clock, calendar, answer_wait=0.0, breaker_failures=3):
        self.deployment, self.tmp, self.clock, self.calendar = deployment, tmp_path, clock, calendar
        self.answer_wait, self.breaker_failures = answer_wait, breaker_failures

    async def __aenter__(self):
        cfg = config.load(self.deployment.server_config)
        ca_dir = self.tmp / "ca"
        if not ca_dir.exists():
            shutil.copytree(self.deployment.root / "ca", ca_dir)
            (ca_dir / "ca.db").unlink(missing_ok=True)
        import dataclasses
        cfg = dataclasses.replace(cfg, ca=dataclasses.replace(cfg.ca, issuing_cert=ca_dir / "issuing.pem"))
        inner = build_ca(cfg)
        await inner.open()
        self.ca = FlakyCA(inner)
        self.store = await SqliteRequestStore.open(self.tmp / "requests.sqlite", clock=self.clock)
        inner.attach_registry(self.store)
        self.broker = Broker(store=self.store, ca=self.ca, min_rsa_bits=cfg.min_rsa_bits,
                             answer_wait=self.answer_wait, renewal=RenewalRules(), clock=self.clock)
        self.relay = Relay(store=self.store, ca=self.ca, calendar=self.calendar, clock=self.clock,
                           retry=RetryPolicy(initial_seconds=1.0, max_seconds=60.0),
                           breaker=CircuitBreaker(self.breaker_failures, 30.0), notify=self.broker.notify)
        self.broker.wake_relay = self.relay.wake
        await self.store.reset_sending("relay")
        await self.relay.reload_maintenance()
        return self

    async def __aexit__(self, *exc):
        await self.relay.stop()
        await self.store.close()
        await self.ca.close()


def issue_input(n: int = 0, request_id: str | None = None) -> IssueInput:
    import uuid
    return IssueInput(request_id=request_id or str(uuid.uuid4()), profile="cns-auth", csr_der=helpers.csr_der(),
                      codice_fiscale=helpers.CF, given_name="Mario", surname="Rossi", birth_date="1980-01-01",
                      card_id=f"74200000{n:08d}"[:16], card_model="test", station_id="RM-STATION-01",
                      chamber_code="RM", operator_id="op-1", ef_dati_personali=helpers.ef_dati())


@pytest.fixture
def monday_noon():
    return dt.datetime(2026, 11, 23, 12, 0, tzinfo=ROME)


@pytest.fixture
def make_env(deployment, tmp_path):
    def make(clock, calendar=ServiceCalendar(), **kw):
        return Env(deployment, tmp_path, clock, calendar, **kw)
    return make
