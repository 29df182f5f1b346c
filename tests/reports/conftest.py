"""Fixtures for the report tests: a store filled by the real broker, relay and embedded CA (the
broker tests' ``Env``) over two scripted days in Rome, and the facts the reports must show."""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from zoneinfo import ZoneInfo

import pytest

from personalizer import deploy
from personalizer.outbox.broker import ChangeInput
from personalizer.ca.base import CertRef
from personalizer.store import AuditEntry
from personalizer.outbox.windows import ServiceCalendar
from tests.broker.conftest import Env, FakeClock, issue_input

ROME = ZoneInfo("Europe/Rome")
DAY1 = dt.date(2026, 11, 23)    # a Monday
DAY2 = dt.date(2026, 11, 24)
QUIET = dt.date(2026, 11, 25)   # nothing happens that day


@pytest.fixture(scope="session")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("reports-deploy") / "cns"
    return deploy.init_deployment(root, chamber="RM", station_id="RM-STATION-01", listen="127.0.0.1:0")


async def _change(env, kind, issued, operator, reason=""):
    ref = CertRef(issued.issuer_dn, issued.serial_hex)
    rec = await env.broker.submit_change(ChangeInput(
        request_id=str(uuid.uuid4()), kind=kind, ref=ref, reason=reason, station_id="RM-STATION-01",
        chamber_code="RM", operator_id=operator))
    await env.relay.run_once()
    return rec.request_id


@pytest.fixture(scope="session")
def history(deployment, tmp_path_factory):
    """Day 1, 10:00 Rome: two cards issued by op-1 (card models "alpha", "beta"), 11:00 the first one
    suspended by op-2, 12:00 the second revoked (keyCompromise) by op-2. Day 2, 09:00: the first card
    reactivated by op-3. Returns the store path and what was done."""
    tmp = tmp_path_factory.mktemp("reports-store")
    clock = FakeClock(dt.datetime.combine(DAY1, dt.time(10, 0), ROME))

    async def go():
        async with Env(deployment, tmp, clock, ServiceCalendar(always_open=True)) as env:
            # October: one issuance answered in 1 s (the previous month of the monthly report)
            clock.set(dt.datetime(2026, 10, 20, 10, 0, tzinfo=ROME))
            await env.broker.submit_issue(issue_input(90))
            clock.advance(1.0)
            await env.relay.run_once()
            clock.set(dt.datetime.combine(DAY1, dt.time(8, 0), ROME))
            admin = AuditEntry("urn:cns:admin:it", "", "stock-add", None, "RM", "done")
            await env.store.add_stock("RM", 10, "first delivery", admin)                 # of any type
            await env.store.add_stock("RM", 5, "alpha cards", admin, device_model="alpha")
            clock.set(dt.datetime.combine(DAY1, dt.time(10, 0), ROME))
            cards = []
            for n, model in ((1, "alpha"), (2, "beta")):
                inp = dataclasses.replace(issue_input(n), card_model=model)
                await env.broker.submit_issue(inp)
                clock.advance(2.0)   # the CA answers 2 s later
                await env.relay.run_once()
                cards.append((inp, await env.store.get_request(inp.request_id)))
            clock.set(dt.datetime.combine(DAY1, dt.time(11, 0), ROME))
            suspend = await _change(env, "suspend", cards[0][1], "op-2")
            clock.set(dt.datetime.combine(DAY1, dt.time(12, 0), ROME))
            revoke = await _change(env, "revoke", cards[1][1], "op-2", "keyCompromise")
            clock.set(dt.datetime.combine(DAY2, dt.time(9, 0), ROME))
            reactivate = await _change(env, "reactivate", cards[0][1], "op-3")
            # Day 2, 14:00: the CA goes down; an issuance waits; three failed attempts open the circuit;
            # at 14:10 the CA is back, the probe closes it and the request is issued (600 s in the queue)
            clock.set(dt.datetime.combine(DAY2, dt.time(14, 0), ROME))
            env.ca.down = True
            slow = issue_input(3)
            await env.broker.submit_issue(slow)
            for _ in range(3):
                await env.relay.run_once()
                clock.advance(61)
            assert env.relay.breaker.state == "open"
            env.ca.down = False
            clock.set(dt.datetime.combine(DAY2, dt.time(14, 10), ROME))
            await env.relay.run_once()
            assert (await env.store.get_request(slow.request_id)).state == "ISSUED"
            # 15:00 a request the CA refused (recorded as the relay records a refusal) and one cancelled
            clock.set(dt.datetime.combine(DAY2, dt.time(15, 0), ROME))
            env.ca.down = True
            refused, cancelled = issue_input(4), issue_input(5)
            for inp in (refused, cancelled):
                await env.broker.submit_issue(inp)
            clock.advance(30)   # both wait 30 s: the month's peak queue depth is 2
            await env.store.fail_request(refused.request_id, "INVALID_ARGUMENT", "csr", "the CA refused the CSR")
            await env.store.cancel(cancelled.request_id, AuditEntry("urn:cns:admin:it", "", "queue-cancel",
                                                                    cancelled.request_id, "", "done"))
            env.ca.down = False
            return cards, suspend, revoke, reactivate

    cards, suspend, revoke, reactivate = asyncio.run(go())
    return dict(database=tmp / "requests.sqlite", cards=cards, suspend=suspend, revoke=revoke,
                reactivate=reactivate, after=dt.datetime.combine(QUIET + dt.timedelta(days=1), dt.time(12), ROME).timestamp())
