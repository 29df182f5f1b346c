"""Fixtures for the broker tests: a deployment, an in-process broker + relay + store (``Daemon.build``,
``serve=False``) around the real embedded CA wrapped in the CA test double (tests/support/ca.py), and
an injected clock. Over SQLite the CA is wired as in production (its index in the store's file, signed
first and committed once on the immediate path, issue 16); ``ca_records_itself`` (and the memory store)
give it its own ``ca.db``, as a CA that keeps its own records."""
from __future__ import annotations

import dataclasses
import datetime as dt
import shutil

import pytest

from personalizer import config, deploy
from personalizer.outbox.broker import IssueInput, RenewalRules
from personalizer.server import Daemon, build_ca
from personalizer.outbox.windows import ServiceCalendar
from personalizer.store import MemoryRequestStore
from tests.support.ca import FaultyCA
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


# The CA double (tests/support/ca.py): the real EmbeddedCA with switchable faults. Its old name here.
FlakyCA = FaultyCA


@pytest.fixture(scope="session")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("broker-deploy") / "cns"
    return deploy.init_deployment(root, chamber="RM", station_id="RM-STATION-01", listen="127.0.0.1:0")


class Env:
    """Broker + relay + store + FlakyCA(EmbeddedCA) in this event loop, time from ``clock``: the daemon as
    ``Daemon.build(serve=False)`` wires it, with this test's calendar, retry and breaker settings.
    ``store="memory"``: over the in-memory store instead of SQLite."""

    def __init__(self, deployment, tmp_path, clock, calendar, answer_wait=0.0, breaker_failures=3, store="sqlite",
                 relay_concurrency=None, ca_records_itself=False):
        self.deployment, self.tmp, self.clock, self.calendar = deployment, tmp_path, clock, calendar
        self.answer_wait, self.breaker_failures, self.store_kind = answer_wait, breaker_failures, store
        self.relay_concurrency = relay_concurrency
        self.ca_records_itself = ca_records_itself

    async def __aenter__(self):
        cfg = config.load(self.deployment.server_config)
        ca_dir = self.tmp / "ca"
        if not ca_dir.exists():
            shutil.copytree(self.deployment.root / "ca", ca_dir)
            (ca_dir / "ca.db").unlink(missing_ok=True)
        cfg = dataclasses.replace(
            cfg, ca=dataclasses.replace(cfg.ca, issuing_cert=ca_dir / "issuing.pem"),
            store=dataclasses.replace(cfg.store, data_dir=self.tmp), calendar=self.calendar, maintenance=(),
            broker=dataclasses.replace(cfg.broker, answer_wait_seconds=self.answer_wait, retry_initial_seconds=1.0,
                                       retry_max_seconds=60.0, breaker_failures=self.breaker_failures,
                                       breaker_reset_seconds=30.0, renewal_window_days=RenewalRules().window_days,
                                       relay_concurrency=self.relay_concurrency or cfg.broker.relay_concurrency))
        if self.store_kind == "memory" or self.ca_records_itself:
            # the CA keeps its own records (its ca.db), as a remote CA (EJBCA) does: a signature whose answer
            # was lost is on record there and found before a retry
            self.daemon = await Daemon.build(cfg, ca=await FlakyCA(build_ca(cfg)).open(),
                                             store=MemoryRequestStore(clock=self.clock)
                                             if self.store_kind == "memory" else None, clock=self.clock,
                                             claimer="relay", serve=False)
        else:   # the SQLite store and the CA wired as in production (its index in the store's file, issue 16)
            self.daemon = await Daemon.build(cfg, ca_wrapper=FlakyCA, clock=self.clock, claimer="relay",
                                             serve=False)
        self.ca = self.daemon.ca
        self.store, self.broker, self.relay = self.daemon.store, self.daemon.broker, self.daemon.relay
        await self.store.reset_sending(self.relay.claimer)   # as relay.start() would, without the task
        await self.relay.reload_maintenance()
        return self

    async def __aexit__(self, *exc):
        await self.daemon.stop()


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
