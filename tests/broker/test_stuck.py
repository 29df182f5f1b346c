"""Issue 9 item 5 / issue 10 items 1-2, in process: no request sticks, and none blocks the others.

* a claim whose holder is gone (committed claimed, never handed to a delivery) is reclaimed within
  a bounded time and delivered once; QueueAdmin's retry takes it back at once;
* a request whose data fails inside the CA every time (a qualified subject whose "GIVEN SURNAME"
  is over 64 characters: cryptography raises ValueError while the CA builds the certificate) fails
  once with INVALID_ARGUMENT and does not count against the circuit breaker; the validation that
  should refuse such data earlier is bypassed here by writing the outbox rows directly, as a
  request accepted by an older version would be;
* a flood of such requests does not delay suspensions: each is in the published CRL within seconds;
* a cancelled request is CANCELLED with error code CANCELLED and never delivered, also when the
  breaker bounced its claim; a request being delivered cannot be cancelled.
"""
from __future__ import annotations

import asyncio
import time
import uuid

from cryptography import x509

from personalizer.outbox.broker import ChangeInput
from personalizer.ca.base import CertRef
from personalizer.outbox.payloads import KIND_ISSUE, LANE_OF, IssuancePayload
from personalizer.pki import PkiPublisher
from personalizer.outbox.relay import STALE_CLAIM_SECONDS
from personalizer.store import AuditEntry, RequestRecord
from personalizer.outbox.windows import ServiceCalendar
from tests.broker.conftest import FakeClock, issue_input
from tests.personalizer import helpers

ADMIN = "urn:cns:admin:central-it"
LONG_GIVEN, LONG_SURNAME = "MARIA" + "A" * 40, "ROSSI" + "I" * 20   # CN "GIVEN SURNAME": 71 characters


def run(coro):
    return asyncio.run(coro)


async def _enqueue_raw(env, *, given="Mario", surname="Rossi", profile="qualified-signature", claim=False):
    """An issuance written straight into the outbox (no broker validation), as an older version accepted it."""
    rid = str(uuid.uuid4())
    payload = IssuancePayload(profile=profile, csr_der=helpers.csr_der(), codice_fiscale=helpers.CF,
                              given_name=given, surname=surname, birth_date="1980-01-01",
                              card_id="7420000000009999", dati_personali_hash=None).encode()
    rec = RequestRecord(request_id=rid, kind=KIND_ISSUE, profile=profile, payload_sha256=uuid.uuid4().bytes,
                        chamber_code="RM", station_id="RM-STATION-01", operator_id="op-1")
    assert await env.store.enqueue(rec, lane=LANE_OF[KIND_ISSUE], payload=payload, claimer="relay" if claim else None,
                                   audit=AuditEntry("test", "RM-STATION-01", KIND_ISSUE, rid, "", "accepted"))
    return rid


async def _issued_ref(env) -> CertRef:
    rec = await env.broker.submit_issue(issue_input())
    await env.relay.run_once()
    rec = await env.store.get_request(rec.request_id)
    assert rec.state == "ISSUED", rec
    return CertRef(rec.issuer_dn, rec.serial_hex)


def _suspend(ref: CertRef) -> ChangeInput:
    return ChangeInput(request_id=str(uuid.uuid4()), kind="suspend", ref=ref, reason="", station_id="central-it",
                       chamber_code="RM", operator_id="op-1")


def test_a_claim_whose_holder_is_gone_is_reclaimed_within_the_bound_and_delivered_once(make_env, monday_noon):
    clock = FakeClock(monday_noon)

    async def go():
        async with make_env(clock) as env:
            rid = await _enqueue_raw(env, profile="cns-auth", claim=True)   # claimed; no delivery holds it
            await env.relay.run_once()
            assert (await env.store.get_request(rid)).outbox_status == "sending"   # not before the bound
            clock.advance(STALE_CLAIM_SECONDS * 1.25 + 1)
            await env.relay.run_once()
            got = await env.store.get_request(rid)
            assert got.state == "ISSUED" and got.attempts == 2, got
            assert env.ca.issue_calls == 1
    run(go())


def test_a_second_daemon_never_reclaims_a_claim_whose_delivery_is_still_running(make_env, monday_noon):
    """Two relays on one database: A delivers a request for longer than the stale bound (a slow CA).
    A renews its live claims, so B's safety net does not take the claim back and deliver it again
    (before: B reclaimed it after 120 s and the CA got the request twice)."""
    from personalizer.outbox.relay import Relay
    clock = FakeClock(monday_noon)

    async def go():
        async with make_env(clock) as env:
            env.ca.delay = 1.5   # A's delivery is in the CA meanwhile (real seconds; the clock is the test's)
            b = Relay(store=env.store, ca=env.ca, calendar=env.relay.calendar, clock=clock, claimer="relay-b")
            await env.relay.start()      # A runs as in the daemon: its loop goes on while deliveries wait
            rec = await env.broker.submit_issue(issue_input())
            rid = rec.request_id
            for _ in range(50):
                if env.ca.calls.get(rid):
                    break
                await asyncio.sleep(0.02)
            assert env.relay.holds(rid) and env.ca.calls.get(rid) == 1
            clock.advance(STALE_CLAIM_SECONDS * 1.25 + 1)
            env.relay.wake()             # A's loop passes (as its idle poll would)
            await asyncio.sleep(0.2)
            await b.run_once()           # B: its safety net
            for _ in range(200):
                if (await env.store.get_request(rid)).state == "ISSUED" and not env.relay.holds(rid) \
                        and not b.holds(rid):
                    break
                await asyncio.sleep(0.05)
            got = await env.store.get_request(rid)
            assert got.state == "ISSUED" and got.attempts == 1, got
            assert env.ca.calls[rid] == 1, f"the CA got the request {env.ca.calls[rid]} times"
    run(go())


def test_queue_retry_takes_back_an_orphaned_claim_at_once(make_env, monday_noon):
    clock = FakeClock(monday_noon)

    async def go():
        async with make_env(clock) as env:
            rid = await _enqueue_raw(env, profile="cns-auth", claim=True)
            assert not env.relay.holds(rid)
            assert await env.store.retry_now(rid, AuditEntry(ADMIN, "", "queue-retry", rid, "", "done"),
                                             orphaned_claim=True)
            await env.relay.run_once()
            assert (await env.store.get_request(rid)).state == "ISSUED"
    run(go())


def test_a_request_failing_inside_the_ca_fails_once_and_never_opens_the_breaker(make_env, monday_noon):
    clock = FakeClock(monday_noon)

    async def go():
        async with make_env(clock, breaker_failures=3) as env:
            ref = await _issued_ref(env)
            bad = [await _enqueue_raw(env, given=LONG_GIVEN, surname=LONG_SURNAME) for _ in range(6)]
            await env.relay.run_once()
            assert env.relay.breaker.state == "closed"
            for rid in bad:
                got = await env.store.get_request(rid)
                assert got.state == "FAILED" and got.error_code == "INVALID_ARGUMENT" and got.attempts == 1, got
                assert "64" in got.error_message
            clock.advance(3600)
            assert await env.store.next_due(("standard",)) is None          # never retried
            sus = await env.broker.submit_change(_suspend(ref))
            await env.relay.run_once()
            assert (await env.store.get_request(sus.request_id)).state == "DONE"
            assert (await env.ca.status(ref)).state.value == "suspended"
    run(go())


def test_ca_unavailability_still_opens_the_breaker(make_env, monday_noon):
    clock = FakeClock(monday_noon)

    async def go():
        async with make_env(clock, breaker_failures=3) as env:
            env.ca.down = True
            for i in range(3):
                await env.broker.submit_issue(issue_input(i))
            await env.relay.run_once()
            assert env.relay.breaker.state == "open"
    run(go())


def test_a_flood_of_requests_failing_inside_the_ca_does_not_delay_suspensions_in_the_crl(make_env, tmp_path):
    async def go():
        async with make_env(time.time, ServiceCalendar(always_open=True), breaker_failures=3) as env:
            publisher = PkiPublisher(env.ca.inner, crl_dir=tmp_path / "crl", http_host="127.0.0.1", http_port=0)
            env.relay._on_status_change = publisher.publish_now
            env.broker.relay = env.relay
            refs = [await _issued_ref(env) for _ in range(5)]
            await env.relay.start()
            await publisher.start()
            try:
                flood = [await _enqueue_raw(env, given=LONG_GIVEN, surname=LONG_SURNAME) for _ in range(60)]
                env.relay.wake()
                started = {}
                for ref in refs:   # suspensions arrive while the flood is delivered
                    started[int(ref.serial_hex, 16)] = time.monotonic()
                    await env.broker.submit_change(_suspend(ref))
                    flood.append(await _enqueue_raw(env, given=LONG_GIVEN, surname=LONG_SURNAME))
                    env.relay.wake()
                latency = {}
                deadline = time.monotonic() + 20
                while len(latency) < len(refs) and time.monotonic() < deadline:
                    crl = x509.load_der_x509_crl(publisher.crl_path.read_bytes())
                    for serial, t0 in started.items():
                        if serial not in latency and crl.get_revoked_certificate_by_serial_number(serial):
                            latency[serial] = time.monotonic() - t0
                    await asyncio.sleep(0.02)
                assert len(latency) == len(refs), f"suspensions missing from the CRL after 20 s: {latency}"
                assert max(latency.values()) < 5.0, latency
                assert env.relay.breaker.transitions == []                       # never opened
                async def states():
                    return {(await env.store.get_request(r)).state for r in flood}
                for _ in range(500):
                    if await states() <= {"FAILED"}:
                        break
                    await asyncio.sleep(0.02)
                states = await states()
                assert states == {"FAILED"}
                print(f"\nflood of {len(flood)}: suspension→CRL max {max(latency.values()) * 1000:.0f} ms")
            finally:
                await publisher.stop()
    run(go())


def test_cancel_makes_a_queued_request_a_refusal_and_the_relay_never_delivers_it(make_env, monday_noon):
    clock = FakeClock(monday_noon)

    async def go():
        async with make_env(clock, breaker_failures=3) as env:
            rec = await env.broker.submit_issue(issue_input())                  # relay not running: queued
            assert rec.state == "RECEIVED"
            assert await env.store.cancel(rec.request_id, AuditEntry(ADMIN, "", "queue-cancel", rec.request_id,
                                                                     "", "done"))
            got = await env.store.get_request(rec.request_id)
            assert got.state == "CANCELLED" and got.error_code == "CANCELLED" and "central IT" in got.error_message
            clock.advance(120)
            await env.relay.run_once()
            assert env.ca.issue_calls == 0
            assert (await env.store.get_request(rec.request_id)).state == "CANCELLED"
    run(go())


def test_a_claim_bounced_by_the_breaker_stays_cancellable_and_a_delivery_in_flight_is_not(make_env, monday_noon):
    clock = FakeClock(monday_noon)

    async def go():
        async with make_env(clock, breaker_failures=3) as env:
            env.broker.relay = env.relay   # as the daemon wires it: accepted requests go claimed to the relay
            await env.relay.start()
            gate = asyncio.Event()
            inner_issue = env.ca.issue

            async def slow_issue(*a, **kw):
                await gate.wait()
                return await inner_issue(*a, **kw)
            env.ca.issue = slow_issue
            busy = await env.broker.submit_issue(issue_input(1))        # claimed at accept, waits at the CA
            assert env.relay.holds(busy.request_id)
            assert not await env.store.cancel(busy.request_id, AuditEntry(ADMIN, "", "queue-cancel",
                                                                          busy.request_id, "", "done"))
            # a request claimed at accept whose delivery finds the breaker open meanwhile
            env.relay.breaker.failures = 2
            bounced_rec = issue_input(2)
            accept = asyncio.create_task(env.broker.submit_issue(bounced_rec))
            while not env.relay.holds(bounced_rec.request_id):            # slot reserved, being committed...
                await asyncio.sleep(0)
            env.relay.breaker.failure(clock())                             # ...then the breaker opens
            await accept
            for _ in range(100):
                got = await env.store.get_request(bounced_rec.request_id)
                if got.outbox_status != "sending":
                    break
                await asyncio.sleep(0.01)
            assert got.outbox_status == "queued" and got.attempts == 0 and got.state == "RECEIVED", got
            assert await env.store.cancel(bounced_rec.request_id, AuditEntry(ADMIN, "", "queue-cancel",
                                                                            bounced_rec.request_id, "", "done"))
            gate.set()
            env.relay.breaker.success(clock())
            clock.advance(120)
            env.relay.wake()
            for _ in range(200):
                if (await env.store.get_request(busy.request_id)).terminal:
                    break
                await asyncio.sleep(0.01)
            assert (await env.store.get_request(busy.request_id)).state == "ISSUED"
            assert (await env.store.get_request(bounced_rec.request_id)).state == "CANCELLED"
            assert await env.ca.inner.find_issued(bounced_rec.request_id) is None
    run(go())
