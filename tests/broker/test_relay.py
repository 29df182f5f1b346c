"""Relay, backoff, breaker, service windows and maintenance: in process, injected clock, FlakyCA."""
from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3

import pytest

from personalizer.ca.base import CertRef
from personalizer.outbox.broker import ChangeInput
from personalizer.errors import FailedPrecondition
from personalizer.store import SqliteRequestStore
from personalizer.outbox.windows import Maintenance, ServiceCalendar
from tests.broker.conftest import ROME, FakeClock, issue_input


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_ca_down_requests_wait_durably_then_drain_once(make_env, monday_noon, store):
    clock = FakeClock(monday_noon)

    async def go():
        async with make_env(clock, store=store, breaker_failures=3) as env:
            env.ca.down = True
            recs = [await env.broker.submit_issue(issue_input(i)) for i in range(5)]
            assert {r.state for r in recs} == {"RECEIVED"}          # answered as soon as durable
            await env.relay.run_once()
            assert env.relay.breaker.state == "open"                  # 3 consecutive failures
            st = await env.store.get_request(recs[0].request_id)
            assert st.state == "PENDING" and st.attempts == 1 and st.next_attempt_at > clock()
            assert "CA unavailable" in env.relay.waiting_reason(await env.store.get_request(recs[4].request_id))
            assert await env.relay.run_once() == 0                    # open: nothing sent
            env.ca.down = False
            clock.advance(120)                                        # past reset and every backoff (max 60 s)
            await env.relay.run_once()                                # half-open probe → closed → drain
            assert env.relay.breaker.state == "closed"
            for r in recs:
                got = await env.store.get_request(r.request_id)
                assert got.state == "ISSUED", got
                found = await env.ca.inner.find_issued(r.request_id)
                assert found.ref.serial_hex == got.serial_hex
            assert env.ca.issue_calls == 5
    run(go())


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_lost_answer_is_found_not_issued_again(make_env, monday_noon, store):
    clock = FakeClock(monday_noon)

    async def go():
        async with make_env(clock, store=store, ca_records_itself=True) as env:   # a CA with its own records
            env.ca.lose_answers = 1
            rec = await env.broker.submit_issue(issue_input())
            await env.relay.run_once()
            assert (await env.store.get_request(rec.request_id)).state == "PENDING"
            clock.advance(61)
            await env.relay.run_once()
            got = await env.store.get_request(rec.request_id)
            assert got.state == "ISSUED" and got.attempts == 2
            assert env.ca.issue_calls == 1                            # found by find_issued, not re-sent
            assert (await env.ca.inner.find_issued(rec.request_id)).ref.serial_hex == got.serial_hex
    run(go())


def test_backoff_schedule_survives_a_restart(make_env, monday_noon, tmp_path):
    clock = FakeClock(monday_noon)

    async def go():
        async with make_env(clock) as env:
            env.ca.down = True
            rec = await env.broker.submit_issue(issue_input())
            await env.relay.run_once()
            first = await env.store.get_request(rec.request_id)
        store = await SqliteRequestStore.open(tmp_path / "requests.sqlite", clock=clock)
        again = await store.get_request(rec.request_id)
        assert await store.next_due(("standard",)) > clock()        # not due before its persisted time
        await store.close()
        assert again.next_attempt_at == first.next_attempt_at > clock() and again.last_error
    run(go())


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_sunday_issuance_waits_suspension_goes_24x7(make_env, store):
    sunday = dt.datetime(2026, 11, 29, 10, 0, tzinfo=ROME)
    clock = FakeClock(dt.datetime(2026, 11, 27, 12, 0, tzinfo=ROME))   # Friday, open

    async def go():
        async with make_env(clock, store=store) as env:
            issued = await env.broker.submit_issue(issue_input())
            await env.relay.run_once()
            cert = await env.store.get_request(issued.request_id)
            assert cert.state == "ISSUED"
            clock.set(sunday)
            waiting = await env.broker.submit_issue(issue_input(1))
            ref = CertRef(cert.issuer_dn, cert.serial_hex)
            sus = await env.broker.submit_change(ChangeInput("sus-1", "suspend", ref, "", "RM-STATION-01", "RM", "op"))
            await env.relay.run_once()
            assert (await env.store.get_request(sus.request_id)).state == "DONE"
            assert (await env.ca.status(ref)).state.value == "suspended"
            w = await env.store.get_request(waiting.request_id)
            assert w.state == "RECEIVED" and w.attempts == 0
            assert "outside the CA service window" in env.relay.waiting_reason(w)
            assert env.relay.calendar.next_change(env.relay.now_dt()) == dt.datetime(2026, 11, 30, 8, 0, tzinfo=ROME)
            clock.set(dt.datetime(2026, 11, 30, 8, 0, 1, tzinfo=ROME))   # Monday 08:00 → drains
            await env.relay.run_once()
            assert (await env.store.get_request(waiting.request_id)).state == "ISSUED"
    run(go())


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_planned_maintenance_stops_every_lane(make_env, monday_noon, store):
    clock = FakeClock(monday_noon)
    start = monday_noon - dt.timedelta(minutes=5)
    end = monday_noon + dt.timedelta(hours=1)

    async def go():
        async with make_env(clock, store=store) as env:
            rec = await env.broker.submit_issue(issue_input())
            await env.relay.run_once()
            cert = await env.store.get_request(rec.request_id)
            await env.store.add_maintenance("m1", start.timestamp(), end.timestamp(), "upgrade", "test")
            await env.relay.reload_maintenance()
            ref = CertRef(cert.issuer_dn, cert.serial_hex)
            sus = await env.broker.submit_change(ChangeInput("sus-m", "suspend", ref, "", "S", "RM", "op"))
            assert await env.relay.run_once() == 0
            assert env.ca.change_calls == 0
            waiting = await env.store.get_request(sus.request_id)
            assert "CA maintenance until" in env.relay.waiting_reason(waiting)
            assert env.relay.active_maintenance().ends_at == end
            clock.set(end)
            await env.relay.run_once()
            assert (await env.store.get_request(sus.request_id)).state == "DONE"
    run(go())


def test_invalid_transitions_are_failed_precondition(make_env, monday_noon):
    clock = FakeClock(monday_noon)

    async def go():
        async with make_env(clock) as env:
            rec = await env.broker.submit_issue(issue_input())
            await env.relay.run_once()
            cert = await env.store.get_request(rec.request_id)
            ref = CertRef(cert.issuer_dn, cert.serial_hex)
            with pytest.raises(FailedPrecondition, match="cannot reactivate a certificate that is active"):
                await env.broker.submit_change(ChangeInput("re-0", "reactivate", ref, "", "S", "RM", "op"))
            await env.broker.submit_change(ChangeInput("rv-1", "revoke", ref, "keyCompromise", "S", "RM", "op"))
            await env.relay.run_once()
            assert (await env.ca.status(ref)).state.value == "revoked"
            with pytest.raises(FailedPrecondition, match="revoked"):
                await env.broker.submit_change(ChangeInput("re-1", "reactivate", ref, "", "S", "RM", "op"))
            audit = await env.store.list_audit()
            assert [(a.operation, a.result) for a in audit if a.request_id == "rv-1"] == [
                ("revoke", "accepted"), ("revoke", "done")]
    run(go())


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_a_change_the_ca_refuses_at_delivery_fails_once_and_keeps_the_breaker_closed(make_env, monday_noon, store):
    """Revoke and suspend queued for one certificate during maintenance: the suspend reaches the CA after the
    revoke and is refused; that answer is final (FAILED_PRECONDITION), not a CA failure to retry."""
    clock = FakeClock(monday_noon)
    end = monday_noon + dt.timedelta(hours=1)

    async def go():
        async with make_env(clock, store=store, breaker_failures=2) as env:
            rec = await env.broker.submit_issue(issue_input())
            await env.relay.run_once()
            cert = await env.store.get_request(rec.request_id)
            ref = CertRef(cert.issuer_dn, cert.serial_hex)
            await env.store.add_maintenance("m2", (monday_noon - dt.timedelta(minutes=1)).timestamp(),
                                            end.timestamp(), "upgrade", "test")
            await env.relay.reload_maintenance()
            rv = await env.broker.submit_change(ChangeInput("rv-m", "revoke", ref, "keyCompromise", "S", "RM", "op"))
            clock.advance(1)
            sus = await env.broker.submit_change(ChangeInput("sus-m2", "suspend", ref, "", "S", "RM", "op"))
            clock.set(end)
            for _ in range(3):
                await env.relay.run_once()
                clock.advance(61)
            assert (await env.store.get_request(rv.request_id)).state == "DONE"
            failed = await env.store.get_request(sus.request_id)
            assert failed.state == "FAILED" and failed.error_code == "FAILED_PRECONDITION", failed
            assert "revoked" in failed.error_message and failed.attempts == 1
            assert env.relay.breaker.state == "closed"
            assert (await env.ca.status(ref)).state.value == "revoked"
    run(go())


def test_watch_follows_the_relay_while_the_ca_comes_back(make_env):
    import time

    async def go():
        async with make_env(time.time, calendar=ServiceCalendar(always_open=True)) as env:
            env.relay._retry = type(env.relay._retry)(initial_seconds=0.05, max_seconds=0.2)
            env.relay.breaker.reset_seconds = 0.2
            env.ca.down = True
            await env.relay.start()
            rec = await env.broker.submit_issue(issue_input())
            seen = []

            async def watch():
                async for r in env.broker.watch(rec.request_id):
                    seen.append(r.state)

            watcher = asyncio.create_task(watch(), name="test-watch")
            await asyncio.sleep(0.5)
            assert not watcher.done() and "PENDING" in seen
            env.ca.down = False
            await asyncio.wait_for(watcher, 10)
            assert seen[0] in ("RECEIVED", "PENDING") and seen[-1] == "ISSUED"
    run(go())


def test_audit_table_is_append_only_in_sql(make_env, monday_noon, tmp_path):
    clock = FakeClock(monday_noon)

    async def go():
        async with make_env(clock) as env:
            await env.broker.submit_issue(issue_input())
    run(go())
    db = sqlite3.connect(tmp_path / "requests.sqlite")
    assert db.execute("SELECT COUNT(*) FROM audit").fetchone()[0] >= 1
    for sql in ("UPDATE audit SET result = 'forged'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute(sql)
    db.close()


def test_italian_calendar():
    cal = ServiceCalendar()
    from personalizer.outbox.windows import easter_sunday, italian_holidays
    assert easter_sunday(2026) == dt.date(2026, 4, 5) and easter_sunday(2027) == dt.date(2027, 3, 28)
    assert dt.date(2027, 3, 29) in italian_holidays(2027)                      # Pasquetta
    assert not cal.is_open(dt.datetime(2027, 3, 29, 10, tzinfo=dt.timezone.utc))
    assert not cal.is_open(dt.datetime(2026, 12, 8, 10, tzinfo=ROME))         # Immacolata, a Tuesday
    assert cal.is_open(dt.datetime(2026, 11, 28, 13, 59, tzinfo=ROME))        # Saturday before 14
    assert not cal.is_open(dt.datetime(2026, 11, 28, 14, 0, tzinfo=ROME))
    assert cal.is_open(dt.datetime(2026, 11, 23, 20, 59, tzinfo=ROME))
    assert not cal.is_open(dt.datetime(2026, 11, 23, 21, 0, tzinfo=ROME))
    summer = dt.datetime(2026, 7, 1, 6, 30, tzinfo=dt.timezone.utc)          # 08:30 CEST
    assert cal.is_open(summer)
    m = Maintenance("x", summer, summer + dt.timedelta(hours=1))
    assert m.active(summer) and not m.active(summer + dt.timedelta(hours=1))
