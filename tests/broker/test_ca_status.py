"""One CA-status reading (outbox.ca_status) behind GetCAStatus and the Prometheus figures.

The broker's ``ca_status()`` and the daemon's ``status_figures()`` (what the metrics endpoint exposes)
are the same reading: normal operation, planned maintenance (not operational, reactivation at the
window's end) and an open circuit breaker (not operational, the probe's detail).
"""
from __future__ import annotations

import asyncio
import datetime as dt

from tests.broker.conftest import FakeClock, issue_input


def test_ca_status_is_one_reading_for_grpc_and_prometheus(make_env, monday_noon):
    clock = FakeClock(monday_noon)
    end = monday_noon + dt.timedelta(hours=1)

    async def go():
        async with make_env(clock, store="memory", breaker_failures=1) as env:
            await env.broker.submit_issue(issue_input())
            await env.relay.run_once()
            ok = await env.broker.ca_status()
            assert ok == await env.daemon.status_figures()
            assert ok.operational and not ok.in_maintenance and ok.breaker_state == "closed" and ok.window_open
            assert ok.issued_recent == 1 and ok.queue_depth == {"priority": 0, "standard": 0}
            assert [k.kind for k in ok.per_kind] == ["issue"] and ok.load == 1 and ok.connector

            await env.store.add_maintenance("m1", clock() - 60, end.timestamp(), "upgrade", "test")
            await env.relay.reload_maintenance()
            m = await env.broker.ca_status()
            assert m == await env.daemon.status_figures()
            assert (m.operational, m.in_maintenance, m.reactivation_at, m.detail) == (
                False, True, end.timestamp(), "planned maintenance: upgrade")
            assert [w.id for w in m.planned] == ["m1"]

            clock.set(end + dt.timedelta(seconds=1))
            env.ca.down = True
            await env.broker.submit_issue(issue_input(1))
            await env.relay.run_once()                      # one failure opens the circuit
            down = await env.broker.ca_status()
            assert down == await env.daemon.status_figures()
            assert not down.operational and down.breaker_state == "open"
            assert down.detail.startswith("CA unreachable (circuit open)")
            assert down.queue_depth["standard"] == 1
    asyncio.run(go())
