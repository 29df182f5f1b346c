"""A relay that shares its store with other daemon processes ([server] processes > 1, issue 16) honours a
maintenance window stored through another process: it rereads the stored windows every
``maintenance_refresh_seconds``, where before only the process whose QueueAdmin added the window knew."""
from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from personalizer.outbox.relay import Relay
from tests.broker.conftest import FakeClock, issue_input


@pytest.mark.parametrize("refresh, sends", [(0.0, 0), (None, 1)])
def test_a_window_stored_by_another_process_stops_this_relay(make_env, monday_noon, refresh, sends):
    clock = FakeClock(monday_noon)

    async def go():
        async with make_env(clock) as env:
            # this process's relay: the same store and CA as the env's ("the other process")
            mine = Relay(store=env.store, ca=env.ca, calendar=env.relay.calendar, clock=clock, claimer="relay#1",
                         maintenance_refresh_seconds=refresh)
            await mine.reload_maintenance()
            rec = await env.broker.submit_issue(issue_input())
            await env.store.add_maintenance("m1", (monday_noon - dt.timedelta(minutes=1)).timestamp(),
                                            (monday_noon + dt.timedelta(hours=1)).timestamp(), "upgrade", "test")
            await env.relay.reload_maintenance()          # what the other process's QueueAdmin call does
            assert await env.relay.run_once() == 0
            sent = await mine.run_once()
            state = (await env.store.get_request(rec.request_id)).state
            return sent, state, env.ca.issue_calls

    sent, state, calls = asyncio.run(go())
    assert (sent, calls) == (sends, sends)
    assert state == ("ISSUED" if sends else "RECEIVED")
