"""The issuance hot path (issue 16): what one SubmitIssue that the relay delivers at once costs the store.

Counted on the real SQLite store (and the in-memory one) and embedded CA, relay running as in the
daemon: one commit to accept (request, outbox and audit rows, committed already claimed), one to
complete, which also reads the request back as committed (what the waiting caller is answered with),
and no other read of the request; no lookup in the CA's index before a first attempt. A caller whose
answer wait runs out still gets the stored state, read then.
"""
from __future__ import annotations

import asyncio
import time

import pytest

from personalizer.outbox.windows import ServiceCalendar
from tests.broker.conftest import issue_input


def _count_reads(store) -> list[str]:
    reads: list[str] = []
    real = store.get_request

    async def counted(request_id):
        reads.append(request_id)
        return await real(request_id)
    store.get_request = counted
    return reads


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_an_immediately_issued_request_is_not_read_again(make_env, store):
    async def go():
        async with make_env(time.time, calendar=ServiceCalendar(always_open=True), answer_wait=10.0,
                            store=store) as env:
            await env.relay.start()
            await env.broker.submit_issue(issue_input(0))          # warm: CA index, responder
            reads = _count_reads(env.store)
            index = await env.ca.inner._db()
            lookups = []
            real_lookup = index.by_request

            async def by_request(request_id):
                lookups.append(request_id)
                return await real_lookup(request_id)
            index.by_request = by_request
            recs = await asyncio.gather(*(env.broker.submit_issue(issue_input(i)) for i in range(1, 9)))
            assert [r.state for r in recs] == ["ISSUED"] * 8
            assert all(r.certificate_der and r.serial_hex for r in recs)
            assert reads == []                     # the outcome is read back in the completing transaction
            assert lookups == []                   # a first attempt is not looked up in the CA's index first
            for r in recs:   # what the caller got is the stored row
                assert await env.store.get_request(r.request_id) == r
    asyncio.run(go())


def test_a_caller_whose_wait_runs_out_gets_the_stored_state(make_env):
    async def go():
        async with make_env(time.time, calendar=ServiceCalendar(always_open=True), answer_wait=0.3) as env:
            env.ca.down = True                      # the CA fails: the request waits for its retry
            await env.relay.start()
            rec = await env.broker.submit_issue(issue_input(1))
            assert rec.state == "PENDING" and rec.created_at > 0
            assert rec == await env.store.get_request(rec.request_id)
    asyncio.run(go())


def test_shared_ca_figures_cost_a_transaction_per_flush_not_per_call(tmp_path):
    """[server] processes > 1: every process shows every process's CA calls (outbox.shared_metrics),
    this process's at once and another's within FLUSH_SECONDS; a burst of calls is one transaction."""
    from personalizer.outbox import shared_metrics

    async def go():
        a = shared_metrics.SharedCAMetrics(tmp_path / shared_metrics.FILE_NAME, reset=True)
        b = shared_metrics.SharedCAMetrics(tmp_path / shared_metrics.FILE_NAME, reset=False)
        commits = []
        a._conn.set_trace_callback(lambda sql: commits.append(sql) if sql.startswith("COMMIT") else None)
        try:
            for i in range(100):
                a.record("issue", 10.0 + i, ok=i % 10 != 0)
                await asyncio.sleep(0)                    # calls spread over loop iterations, as the relay's
            assert a.totals_now() == {("issue", "ok"): 90, ("issue", "error"): 10}   # its own: at once
            assert len(commits) == 1, commits
            a.record("revoke", 5.0, ok=True)
            deadline = time.monotonic() + 2
            while b.totals_now().get(("revoke", "ok")) != 1:      # another process's: within FLUSH_SECONDS
                assert time.monotonic() < deadline, b.totals_now()
                await asyncio.sleep(0.01)
            assert b.totals_now() == {("issue", "ok"): 90, ("issue", "error"): 10, ("revoke", "ok"): 1}
            assert [(k.kind, k.samples) for k in b.per_kind()] == [("issue", 100), ("revoke", 1)]
            assert b.load() == 101 and len(commits) == 2
        finally:
            a.close()
            b.close()
    asyncio.run(go())



def test_issue_called_twice_for_one_request_still_gets_one_certificate(make_env):
    """``issue`` does not look in the CA's index before signing (the relay looks before a retry), yet one
    request id has one certificate: the CA's row is written by the completing transaction (issue 16, as
    on PostgreSQL), and a second certificate for the request fails that transaction (request_id UNIQUE),
    leaving the first on record and the request as it was completed."""
    import datetime as dt

    from cryptography import x509

    from personalizer.ca.base import CertificateSubject
    from personalizer.errors import StoreError
    from personalizer.records import AuditEntry
    from personalizer.rules import validation
    from tests.personalizer import helpers

    async def go():
        async with make_env(time.time, calendar=ServiceCalendar(always_open=True)) as env:
            ca = env.ca.inner
            assert (await ca._db()).recorded_by_store
            rec = await env.broker.submit_issue(issue_input(1))            # queued: the relay is not running
            csr = x509.load_der_x509_csr(helpers.csr_der())
            subject = CertificateSubject(validation.Holder(helpers.CF, "Mario", "Rossi", dt.date(1980, 1, 1)),
                                         "7420000000000001", None)
            a = await ca.issue("cns-auth", csr, subject, rec.request_id)
            b = await ca.issue("cns-auth", csr, subject, rec.request_id)   # e.g. a second, stale delivery
            assert a.ref != b.ref and await ca.find_issued(rec.request_id) is None   # signed, on record nowhere
            audit = AuditEntry("relay", "RM-STATION-01", "issue", rec.request_id, "", "done")
            done = await env.store.complete_issue(rec.request_id, a, "cns-auth", card_id="7420000000000001",
                                                  holder_cf=helpers.CF, audit=audit)
            assert done.state == "ISSUED" and done.serial_hex == a.ref.serial_hex
            with pytest.raises(StoreError, match="UNIQUE"):
                await env.store.complete_issue(rec.request_id, b, "cns-auth", card_id="7420000000000001",
                                               holder_cf=helpers.CF, audit=audit)
            assert (await ca.find_issued(rec.request_id)).ref == a.ref
            assert (await env.store.get_request(rec.request_id)) == done
            assert await ca.status(b.ref) is None                           # the second was given to no one
    asyncio.run(go())


def test_an_issuance_commits_once_in_one_file(make_env):
    """Issue 16: the embedded CA's index lives in the request store's file and its row of a certificate is
    written by the request's own transaction, so an issuance on the immediate path is signed first and
    committed ONCE with its certificate (request, outbox, both audit rows, certificate, the CA's row, key):
    no second commit for the intake, no commit (fsync) on a second database, no ``ca.db`` at all."""
    import sqlite3

    from personalizer.ca.base import CertRef

    async def go():
        async with make_env(time.time, calendar=ServiceCalendar(always_open=True), answer_wait=10.0) as env:
            await env.relay.start()
            await env.broker.submit_issue(issue_input(0))          # warm: CA index, responder
            await asyncio.sleep(0.1)                                # the relay's first pass is over
            index = await env.ca.inner._db()
            store = getattr(env.store, "inner", env.store)
            store_commits, index_commits = store.commits, index.commits
            recs = [await env.broker.submit_issue(issue_input(i)) for i in range(1, 9)]   # one after another
            assert [r.state for r in recs] == ["ISSUED"] * 8
            assert index.commits - index_commits == 0
            assert store.commits - store_commits == 8
            assert not (env.tmp / "ca" / "ca.db").exists()
            with sqlite3.connect(f"file:{env.daemon.cfg.store.database}?mode=ro", uri=True) as c:
                rows = dict(c.execute("SELECT request_id, serial_hex FROM ca_certificates").fetchall())
            assert all(rows[r.request_id] == r.serial_hex for r in recs)
            for r in recs:   # the CA answers for them from its index (OCSP, status)
                info = await env.ca.status(CertRef(r.issuer_dn, r.serial_hex))
                assert info is not None and info.request_id == r.request_id and info.state.value == "active"
    asyncio.run(go())


def _count_calls(store, name: str) -> list:
    calls: list = []
    real = getattr(store, name)

    async def counted(*args, **kw):
        calls.append(args)
        return await real(*args, **kw)
    setattr(store, name, counted)
    return calls


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_an_immediate_delivery_does_not_make_the_relay_scan_the_queue(make_env, store):
    """A request committed claimed and delivered at once leaves nothing for the relay's loop to look for:
    its end does not wake the loop (no claim_due write, no next_due read per certificate; issue 16)."""
    async def go():
        async with make_env(time.time, calendar=ServiceCalendar(always_open=True), answer_wait=10.0,
                            store=store) as env:
            await env.relay.start()
            await env.broker.submit_issue(issue_input(0))          # warm: CA index, responder
            await asyncio.sleep(0.1)
            claims, dues = _count_calls(env.store, "claim_due"), _count_calls(env.store, "next_due")
            for _ in range(3):   # one after another and together
                assert (await env.broker.submit_issue(issue_input(1))).state == "ISSUED"
            recs = await asyncio.gather(*(env.broker.submit_issue(issue_input(i)) for i in range(2, 10)))
            assert [r.state for r in recs] == ["ISSUED"] * 8
            await asyncio.sleep(0.2)                                # let a woken loop run, if woken
            assert claims == [] and dues == []
    asyncio.run(go())


def test_requests_queued_while_every_slot_is_busy_are_still_delivered_at_once(make_env):
    """With the relay's slots full a request is queued unclaimed; the deliveries that end then wake the
    loop, which claims it: nothing waits for the idle poll."""
    async def go():
        async with make_env(time.time, calendar=ServiceCalendar(always_open=True), answer_wait=10.0,
                            relay_concurrency=2) as env:
            await env.relay.start()
            t0 = time.monotonic()
            recs = await asyncio.gather(*(env.broker.submit_issue(issue_input(i)) for i in range(12)))
            assert [r.state for r in recs] == ["ISSUED"] * 12
            assert time.monotonic() - t0 < 4.0                      # the idle poll is 5 s
    asyncio.run(go())


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_an_immediate_request_is_signed_in_the_task_that_committed_it(make_env, store):
    """The immediate path (issue 16): a request accepted while the relay has a free slot is committed
    claimed and delivered by the same task (no delivery task, no hand-off, no wake-up); the caller is
    answered with the row the completing transaction read back."""
    async def go():
        async with make_env(time.time, calendar=ServiceCalendar(always_open=True), answer_wait=10.0,
                            store=store) as env:
            await env.relay.start()
            await env.broker.submit_issue(issue_input(0))          # warm
            committed, signed = {}, {}
            real_enqueue, real_issue = getattr(env.store, "enqueue_issued", env.store.enqueue), env.ca.issue

            async def enqueue(rec, **kw):
                committed[rec.request_id] = asyncio.current_task()
                return await real_enqueue(rec, **kw)

            async def issue(profile, csr, subject, request_id):
                signed[request_id] = asyncio.current_task()
                return await real_issue(profile, csr, subject, request_id)
            if store == "sqlite":   # signed first, then committed once (Broker.sign_first)
                env.store.enqueue_issued, env.ca.issue = enqueue, issue
            else:
                env.store.enqueue, env.ca.issue = enqueue, issue
            recs = await asyncio.gather(*(env.broker.submit_issue(issue_input(i)) for i in range(1, 7)))
            assert [r.state for r in recs] == ["ISSUED"] * 6
            assert set(signed) == set(committed) == {r.request_id for r in recs}
            assert all(signed[rid] is committed[rid] for rid in signed)
            assert not any(env.relay.holds(r.request_id) for r in recs)
            for r in recs:
                assert await env.store.get_request(r.request_id) == r
    asyncio.run(go())


def test_sign_first_keeps_the_intake_refusals_and_gives_a_wasted_signature_to_no_one(make_env):
    """Signed first, committed once: a retry of a request id gets the stored request (its certificate, not
    the one signed again for it), and a refused intake (the key another request holds) writes nothing, so
    the signature made for it is on record nowhere. A CA that fails before the commit makes the request go
    the ordinary way: committed, then delivered (here: retried), never lost."""
    import dataclasses

    from personalizer.errors import InvalidRequest

    async def go():
        async with make_env(time.time, calendar=ServiceCalendar(always_open=True), answer_wait=2.0) as env:
            assert env.broker.sign_first
            await env.relay.start()
            inp = issue_input(1, request_id="same-id")
            first = await env.broker.submit_issue(inp)
            again = await env.broker.submit_issue(inp)
            assert first.state == again.state == "ISSUED" and again.certificate_der == first.certificate_der
            index = await env.ca.inner._db()
            assert (await index.by_request("same-id")).serial_hex == first.serial_hex
            with pytest.raises(InvalidRequest):                          # the key is certified already
                await env.broker.submit_issue(dataclasses.replace(inp, request_id="other-id"))
            assert await env.store.get_request("other-id") is None and await index.by_request("other-id") is None
            env.ca.down = True                                           # the CA fails before any commit
            queued = await env.broker.submit_issue(issue_input(3, request_id="while-down"))
            assert queued.state in ("RECEIVED", "PENDING")
            assert await env.store.get_request("while-down") is not None   # committed: never lost
    asyncio.run(go())


def test_a_slow_signature_is_not_waited_for_uncommitted(make_env):
    """Sign first has a budget (``broker.SIGN_FIRST_SECONDS``): a CA slower than that gets the request
    committed first, as before, and the caller whose answer wait runs out has the durable state."""
    from personalizer.outbox import broker as broker_module

    async def go():
        async with make_env(time.time, calendar=ServiceCalendar(always_open=True), answer_wait=0.8) as env:
            await env.relay.start()
            await env.broker.submit_issue(issue_input(0))          # warm
            env.ca.delay = 1.0                                       # each signature takes 1 s
            t0 = time.monotonic()
            rec = await env.broker.submit_issue(issue_input(1))
            assert time.monotonic() - t0 < 0.8 + broker_module.SIGN_FIRST_SECONDS + 0.5
            assert rec.state == "PENDING" and await env.store.get_request(rec.request_id) == rec
            for _ in range(300):                                     # and it is issued, once
                if (await env.store.get_request(rec.request_id)).state == "ISSUED":
                    break
                await asyncio.sleep(0.01)
            assert (await env.store.get_request(rec.request_id)).state == "ISSUED"
    asyncio.run(go())
