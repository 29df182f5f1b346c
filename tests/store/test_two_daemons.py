"""Two daemons on one SQLite request store: no request is delivered to the CA twice.

A standby started next to a primary (or a primary restarted while another daemon shares its
database) must never take over the other daemon's live claims, and claiming due rows is one atomic
store call (``claim_due``). Two ``Daemon.build(serve=False)`` instances, each with its own store object on
the same file and its own CA double over the same embedded CA, deliver a burst of requests while the CA
is slow; the CA doubles count every issue call per request id.

On the code before ``claim_due`` and claim owners, the second daemon's start (``reset_sending()``, all
rows) put the first daemon's in-flight claims back in the queue and it delivered them again.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from personalizer import config, deploy
from personalizer.outbox.windows import ServiceCalendar
from personalizer.server import Daemon, build_ca
from personalizer.store import SqliteRequestStore
from tests.broker.conftest import issue_input
from tests.support.ca import FaultyCA

REQUESTS = 24


@pytest.fixture(scope="module")
def shared_deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("two-daemons") / "cns"
    return deploy.init_deployment(root, chamber="RM", station_id="RM-STATION-01", listen="127.0.0.1:0")


async def _daemon(cfg, name: str):
    ca = await FaultyCA(build_ca(cfg)).open()
    ca.delay = 0.15                                   # deliveries overlap the other daemon's start
    store = await SqliteRequestStore.open(cfg.store.database, synchronous="OFF")
    return await Daemon.build(cfg, ca=ca, store=store, claimer=name, serve=False)


async def _settle(store, inputs, seconds: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + seconds
    while True:
        states = {x.request_id: (await store.get_request(x.request_id)).state for x in inputs}
        if all(s == "ISSUED" for s in states.values()) or time.monotonic() > deadline:
            return states
        await asyncio.sleep(0.05)


def test_two_daemons_on_one_store_never_deliver_a_request_twice(shared_deployment):
    cfg = config.load(shared_deployment.server_config)
    cfg = dataclasses.replace(cfg, calendar=ServiceCalendar(always_open=True),
                              broker=dataclasses.replace(cfg.broker, answer_wait_seconds=0.0, relay_concurrency=4))

    async def go():
        a = await _daemon(cfg, "primary")
        b = await _daemon(cfg, "standby")
        try:
            await a.start()
            # 1. A has claimed requests in flight at a slow CA when B starts on the same database
            first = [issue_input(i) for i in range(4)]
            await asyncio.gather(*(a.broker.submit_issue(x) for x in first))   # claimed at acceptance by A
            while a.ca.issue_calls == 0:
                await asyncio.sleep(0.01)
            await b.start()
            states = await _settle(a.store, first)
            # 2. both running, requests arriving at both: they share one queue
            second = [issue_input(100 + i) for i in range(REQUESTS)]
            await asyncio.gather(*(d.broker.submit_issue(x) for d, x in zip([a, b] * REQUESTS, second)))
            states.update(await _settle(a.store, second))
            calls = {rid: a.ca.calls.get(rid, 0) + b.ca.calls.get(rid, 0) for rid in states}
            return states, calls, a.ca.issue_calls, b.ca.issue_calls
        finally:
            await b.stop()
            await a.stop()

    states, calls, by_a, by_b = asyncio.run(go())
    assert all(s == "ISSUED" for s in states.values()), states
    assert sorted(set(calls.values())) == [1], {rid: n for rid, n in calls.items() if n != 1}
    assert by_a > 0 and by_b > 0, (by_a, by_b)        # both daemons delivered: they really shared the queue


def test_two_store_objects_claiming_concurrently_never_share_a_row(tmp_path):
    """The claim itself, without relays: two stores (two writer connections) on one file, claiming in
    parallel threads of SQLite until the queue is empty."""
    async def go():
        a = await SqliteRequestStore.open(tmp_path / "r.sqlite", synchronous="OFF")
        b = await SqliteRequestStore.open(tmp_path / "r.sqlite", synchronous="OFF")
        try:
            from tests.store.test_contract import put
            for i in range(300):
                await put(a, f"r{i:03}")

            async def drain(store, name):
                got = []
                while batch := await store.claim_due(time.time(), ("standard",), 5, name):
                    got += [c.record.request_id for c in batch]
                    await asyncio.sleep(0.002)   # a relay does work between claims: the other store gets in
                return got
            return await asyncio.gather(drain(a, "A"), drain(b, "B"), drain(a, "A2"), drain(b, "B2"))
        finally:
            await a.close()
            await b.close()

    claimed = asyncio.run(go())
    ids = [rid for part in claimed for rid in part]
    assert len(ids) == len(set(ids)) == 300
    assert claimed[0] + claimed[2] and claimed[1] + claimed[3], [len(p) for p in claimed]   # both stores claimed
