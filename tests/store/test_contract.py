"""The RequestStore contract: one suite, run over every implementation (tests/store/conftest.py STORES).

What the broker, the relay, the queue admin, deferred issuance, enrollment and the embedded CA's
registry rely on: idempotent intake with key bindings and holder records, atomic claims, retries and
give-backs, completions, cancellation, queue views, certificates, maintenance, registrations, stock,
audit bounds, stations. Each test states one behaviour a caller depends on.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from personalizer.ca.base import CertRef, CertState, CertStatusInfo, IssuedCertificate
from personalizer.errors import StoreError
from personalizer.records import (AUDIT_LIMITS, LANE_PRIORITY, LANE_STANDARD, MAX_ERROR_TEXT, AuditEntry,
                                  HolderRecord, KeyAlreadyCertified, KeyBinding, RequestRecord)
from personalizer.rules.registrations import Registration
from personalizer.rules.validation import certificate_key_sha256
from personalizer.store import MemoryRequestStore, RequestStore, SqliteRequestStore, StationStore

ISSUER = "CN=Test Issuing CA,O=Test"


def run(coro):
    return asyncio.run(coro)


def rec(rid: str, kind: str = "issue", profile: str = "cns-auth", operator: str = "op-1") -> RequestRecord:
    return RequestRecord(request_id=rid, kind=kind, profile=profile, payload_sha256=b"fp-" + rid.encode(),
                         chamber_code="RM", station_id="RM-01", operator_id=operator)


def audit(rid: str | None, result: str = "accepted", **kw) -> AuditEntry:
    return AuditEntry(kw.pop("actor", "spiffe://test/station"), "RM-01", kw.pop("operation", "issue"), rid, "",
                      result, **kw)


async def put(store, rid: str, *, lane: str = LANE_STANDARD, kind: str = "issue", **kw) -> bool:
    return await store.enqueue(rec(rid, kind), lane=lane, payload=b'{"card_model": "M1"}', audit=audit(rid), **kw)


def certificate(serial: int, *, days: int = 365, start: dt.datetime | None = None) -> IssuedCertificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"holder {serial}")])
    start = start or dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(serial).not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
            .sign(key, hashes.SHA256()))
    from cryptography.hazmat.primitives.serialization import Encoding
    return IssuedCertificate(CertRef(ISSUER, f"{serial:X}"), cert.public_bytes(Encoding.DER), (b"issuing", b"root"),
                             start, start + dt.timedelta(days=days))


def test_every_implementation_satisfies_the_protocols(open_store):
    async def go():
        async with open_store() as store:
            assert isinstance(store, RequestStore) and isinstance(store, StationStore)
    run(go())


# -- intake ---------------------------------------------------------------------------------------


def test_enqueue_writes_request_outbox_and_audit_once(open_store, clock):
    async def go():
        async with open_store() as store:
            assert await put(store, "r1") is True
            got = await store.get_request("r1")
            assert (got.state, got.outbox_status, got.attempts, got.lane) == ("RECEIVED", "queued", 0, LANE_STANDARD)
            assert got.created_at == got.updated_at == clock() and got.next_attempt_at == clock()
            assert got.payload_sha256 == b"fp-r1" and not got.terminal
            payload = await store.get_payload("r1")
            assert (payload.kind, payload.payload, payload.status) == ("issue", b'{"card_model": "M1"}', "queued")
            clock.advance(5)
            assert await put(store, "r1") is False                       # a retry writes nothing
            assert [a.request_id for a in await store.list_audit()] == ["r1"]
            assert (await store.get_request("r1")).created_at == clock() - 5
            assert await store.get_request("nope") is None and await store.get_payload("nope") is None
    run(go())


def test_a_key_is_certified_for_one_request_until_that_request_fails(open_store):
    async def go():
        async with open_store() as store:
            key = KeyBinding(b"k" * 32, "RSSMRA80A01H501U", "cns-auth")
            assert await put(store, "a", key=key)
            assert await store.key_binding(key.key_sha256) == dataclasses.replace(key, request_id="a")
            with pytest.raises(KeyAlreadyCertified):
                await put(store, "b", key=dataclasses.replace(key, holder_cf="VRDGPP80A01H501X"))
            assert await store.get_request("b") is None                 # nothing of b was written
            assert [a.request_id for a in await store.list_audit()] == ["a"]
            assert await put(store, "a", key=key) is False               # a's own retry: no refusal
            await store.fail_request("a", "INVALID_ARGUMENT", "csr_der", "refused by the CA")
            assert await put(store, "b", key=key)                        # freed: a ended without a certificate
            assert (await store.key_binding(key.key_sha256)).request_id == "b"
    run(go())


def test_holder_records_are_kept_per_request(open_store):
    async def go():
        async with open_store() as store:
            h = HolderRecord("", "7420000000001234", "RSSMRA80A01H501U", "Mario", "Rossi", "1980-01-01", "M1")
            assert await put(store, "r1", holder=h)
            assert await store.get_holder("r1") == dataclasses.replace(h, request_id="r1")
            assert await put(store, "r2")
            assert await store.get_holder("r2") is None
            assert await put(store, "r1", holder=dataclasses.replace(h, given_name="Other")) is False
            assert (await store.get_holder("r1")).given_name == "Mario"  # a retry changes nothing
    run(go())


def test_create_request_and_ensure_outbox_resume_old_rows(open_store):
    async def go():
        async with open_store() as store:
            assert await store.create_request(rec("old"))
            assert await store.create_request(rec("old")) is False
            assert (await store.get_request("old")).outbox_status is None
            await store.ensure_outbox("old", lane=LANE_STANDARD, kind="issue", payload=b"p")
            await store.ensure_outbox("old", lane=LANE_PRIORITY, kind="issue", payload=b"q")   # no-op
            got = await store.get_request("old")
            assert (got.outbox_status, got.lane) == ("queued", LANE_STANDARD)
    run(go())


# -- delivery ---------------------------------------------------------------------------------------


def test_claim_due_takes_due_rows_of_open_lanes_priority_first(open_store, clock):
    async def go():
        async with open_store() as store:
            await put(store, "s1")
            clock.advance(1)
            await put(store, "s2")
            await put(store, "p1", lane=LANE_PRIORITY, kind="suspend")
            assert await store.next_due((LANE_STANDARD,)) == clock() - 1
            assert await store.next_due(()) is None
            assert [c.record.request_id for c in await store.claim_due(clock(), (LANE_PRIORITY,), 10, "A")] == ["p1"]
            claimed = await store.claim_due(clock(), (LANE_PRIORITY, LANE_STANDARD), 1, "A")
            assert [c.record.request_id for c in claimed] == ["s1"]           # oldest due first, limit kept
            c = claimed[0]
            assert (c.record.state, c.record.outbox_status, c.record.attempts) == ("PENDING", "sending", 1)
            assert (c.payload.kind, c.payload.status, c.payload.attempts) == ("issue", "sending", 1)
            assert [c.record.request_id for c in await store.claim_due(clock(), (LANE_STANDARD,), 10, "B")] == ["s2"]
            assert await store.claim_due(clock(), (LANE_PRIORITY, LANE_STANDARD), 10, "B") == []
            assert await store.claim_due(clock(), (), 10, "B") == []
            assert await store.next_due((LANE_PRIORITY, LANE_STANDARD)) is None
    run(go())


def test_concurrent_claims_on_one_store_never_share_a_row(open_store, clock):
    async def go():
        async with open_store() as store:
            for i in range(60):
                await put(store, f"r{i:02}")
            batches = await asyncio.gather(*(store.claim_due(clock(), (LANE_STANDARD,), 7, f"c{i}")
                                             for i in range(12)))
            ids = [c.record.request_id for b in batches for c in b]
            assert len(ids) == len(set(ids)) == 60
    run(go())


def test_retry_release_and_reset_of_claims(open_store, clock):
    async def go():
        async with open_store() as store:
            for rid in ("a", "b", "c", "d"):
                await put(store, rid)
            await store.claim_due(clock(), (LANE_STANDARD,), 2, "A")          # a, b by A
            await store.claim_due(clock(), (LANE_STANDARD,), 2, "B")          # c, d by B
            await store.schedule_retry("a", clock() + 30, "CA down " + "x" * 1000)
            got = await store.get_request("a")
            assert (got.outbox_status, got.next_attempt_at, got.attempts) == ("retry", clock() + 30, 1)
            assert len(got.last_error) == MAX_ERROR_TEXT
            assert await store.claim_due(clock(), (LANE_STANDARD,), 10, "A") == []   # not due yet
            clock.advance(30)
            again = await store.claim_due(clock(), (LANE_STANDARD,), 10, "A")
            assert [(c.record.request_id, c.record.attempts) for c in again] == [("a", 2)]
            await store.release_claim("b", clock(), "CA circuit open")       # never reached the CA
            got = await store.get_request("b")
            assert (got.outbox_status, got.attempts, got.state) == ("queued", 0, "RECEIVED")
            assert await store.reset_sending("A") == 1                        # a (A's); c and d stay B's
            assert [(await store.get_request(r)).outbox_status for r in "abcd"] == ["retry", "queued", "sending",
                                                                                  "sending"]
            assert (await store.get_request("a")).attempts == 2               # attempts kept: look up first
    run(go())


def test_reclaim_stale_takes_back_old_claims_no_live_delivery_holds(open_store, clock):
    async def go():
        async with open_store() as store:
            for rid in ("a", "b", "c"):
                await put(store, rid)
            await store.claim_due(clock(), (LANE_STANDARD,), 2, "A")          # a, b
            clock.advance(200)
            await store.claim_due(clock(), (LANE_STANDARD,), 1, "A")          # c, fresh
            n = await store.reclaim_stale(clock() - 120, ["b"], "claim without a live delivery")
            assert n == 1
            a = await store.get_request("a")
            assert (a.outbox_status, a.attempts, a.next_attempt_at, a.last_error) == (
                "retry", 1, clock(), "claim without a live delivery")
            assert [(await store.get_request(r)).outbox_status for r in "bc"] == ["sending", "sending"]
    run(go())


def test_a_renewed_claim_is_not_stale_and_only_its_claimer_renews_it(open_store, clock):
    async def go():
        async with open_store() as store:
            for rid in ("a", "b", "c"):
                await put(store, rid)
            await store.claim_due(clock(), (LANE_STANDARD,), 2, "A")          # a, b by A
            await store.claim_due(clock(), (LANE_STANDARD,), 1, "B")          # c by B
            clock.advance(200)
            # A's lease covers a (its live delivery); B cannot renew A's b; c is B's but not named
            assert await store.renew_claims("A", ["a"]) == 1
            assert await store.renew_claims("B", ["b"]) == 0
            assert await store.renew_claims("A", []) == 0
            n = await store.reclaim_stale(clock() - 120, [], "claim without a live delivery")
            assert n == 2
            assert [(await store.get_request(r)).outbox_status for r in "abc"] == ["sending", "retry", "retry"]
    run(go())


def test_defer_moves_waiting_rows_only(open_store, clock):
    async def go():
        async with open_store() as store:
            await put(store, "a")
            await put(store, "b")
            await store.claim_due(clock(), (LANE_STANDARD,), 1, "A")
            await store.defer(["a", "b"], clock() + 600, "outside the CA service window")
            a, b = await store.get_request("a"), await store.get_request("b")
            assert (a.outbox_status, a.next_attempt_at) == ("sending", clock())
            assert (b.outbox_status, b.next_attempt_at, b.last_error) == ("queued", clock() + 600,
                                                                          "outside the CA service window")
    run(go())


def test_complete_issue_records_certificate_binds_its_key_and_is_idempotent(open_store, clock):
    async def go():
        async with open_store() as store:
            await put(store, "r1")
            (c,) = await store.claim_due(clock(), (LANE_STANDARD,), 1, "A")
            issued = certificate(0xABC1)
            clock.advance(2)
            done = audit("r1", "done", actor="relay", operator_id=None)
            await store.complete_issue("r1", issued, "cns-auth", card_id="7420000000001234",
                                       holder_cf="RSSMRA80A01H501U", audit=done)
            got = await store.get_request("r1")
            assert (got.state, got.outbox_status, got.serial_hex, got.issuer_dn) == ("ISSUED", "done", "ABC1", ISSUER)
            assert got.certificate_der == issued.certificate_der and got.chain_der == issued.chain_der
            assert got.terminal
            assert [i.ref for i in await store.find_issued("r1")] == [issued.ref]
            info = await store.get_certificate_status(CertRef(ISSUER, "abc1"))   # serial in any case
            assert (info.state, info.request_id, info.not_before) == (CertState.ACTIVE, "r1", issued.not_before)
            row = await store.get_certificate(issued.ref)
            assert (row.card_id, row.holder_cf, row.profile, row.status) == ("7420000000001234", "RSSMRA80A01H501U",
                                                                           "cns-auth", "active")
            binding = await store.key_binding(certificate_key_sha256(issued.certificate_der))
            assert (binding.request_id, binding.holder_cf) == ("r1", "RSSMRA80A01H501U")
            await store.record_issued("r1", "cns-auth", issued)              # a second record: no change
            assert len(await store.find_issued("r1")) == 1
            assert (await store.list_audit())[-1].operator_id == "op-1"      # the request's operator
            assert await store.recent_issuance_stats(60) == (1, 2000.0)
            assert await store.first_issued_for_card("7420000000001234") == issued.not_before
            assert await store.first_issued_for_card("other") is None
    run(go())


def test_complete_change_and_fail_request(open_store, clock):
    async def go():
        async with open_store() as store:
            issued = certificate(0xBEEF)
            await put(store, "x")
            with pytest.raises(StoreError):                                    # a certificate names its request
                await store.record_issued("unknown", "cns-auth", issued)
            await store.record_issued("x", "cns-auth", issued, card_id="C1", holder_cf="RSSMRA80A01H501U")
            await put(store, "s1", lane=LANE_PRIORITY, kind="revoke")
            await store.claim_due(clock(), (LANE_PRIORITY,), 1, "A")
            when = dt.datetime(2027, 6, 1, tzinfo=dt.timezone.utc)
            await store.complete_change("s1", CertStatusInfo(issued.ref, CertState.REVOKED, issued.not_before,
                                                             issued.not_after, "x", "keyCompromise", when),
                                        audit=audit("s1", "done", operation="revoke"))
            got = await store.get_request("s1")
            assert (got.state, got.outbox_status, got.serial_hex) == ("DONE", "done", "BEEF")
            info = await store.get_certificate_status(issued.ref)
            assert (info.state, info.revocation_reason, info.revoked_at) == (CertState.REVOKED, "keyCompromise", when)
            await put(store, "f1")
            await store.fail_request("f1", "INVALID_ARGUMENT", "csr_der", "m" * 2000, audit=audit("f1", "failed"))
            got = await store.get_request("f1")
            assert (got.state, got.error_code, got.error_field, got.outbox_status) == (
                "FAILED", "INVALID_ARGUMENT", "csr_der", "failed")
            assert len(got.error_message) == MAX_ERROR_TEXT and got.terminal
            await store.update_certificate_status(CertStatusInfo(issued.ref, CertState.SUSPENDED, issued.not_before,
                                                                 issued.not_after, "x"))
            assert (await store.get_certificate_status(issued.ref)).state == CertState.SUSPENDED
    run(go())


def test_find_certificates_of_a_card_or_a_holder(open_store):
    async def go():
        async with open_store() as store:
            await put(store, "r1")
            await store.create_request(dataclasses.replace(rec("zz"), chamber_code="MI"))
            a = certificate(1, start=dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc))
            b = certificate(2, start=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
            await store.record_issued("r1", "cns-auth", a, card_id="C1", holder_cf="RSSMRA80A01H501U")
            await store.record_issued("zz", "qualified-signature", b, card_id="C1", holder_cf="RSSMRA80A01H501U")
            found = await store.find_certificates(card_id="C1")
            assert [f.info.ref.serial_hex for f in found] == ["2", "1"]       # oldest first
            assert [f.chamber_code for f in found] == ["MI", "RM"]            # the requesting chamber
            assert len(await store.find_certificates(holder_cf="rssmra80a01h501u")) == 2
            assert await store.find_certificates(card_id="C2") == []
            assert len(await store.find_certificates(card_id="C1", limit=1)) == 1
            with pytest.raises(ValueError):
                await store.find_certificates()
    run(go())


# -- queue administration ------------------------------------------------------------------------


def test_cancel_only_what_never_reached_the_ca(open_store, clock):
    async def go():
        async with open_store() as store:
            for rid in ("a", "b", "c"):
                await put(store, rid)
            await store.claim_due(clock(), (LANE_STANDARD,), 1, "A")          # a claimed
            await store.claim_due(clock(), (LANE_STANDARD,), 1, "A")          # b claimed ...
            await store.schedule_retry("b", clock() + 10, "down")             # ... and attempted once
            before = len(await store.list_audit())
            assert await store.cancel("a", audit(None, "done", operation="queue-cancel")) is False
            assert await store.cancel("b", audit(None, "done", operation="queue-cancel")) is False
            assert len(await store.list_audit()) == before                     # refused: no audit row
            assert await store.cancel("c", audit("c", "done", operation="queue-cancel", actor="spiffe://it/admin"))
            got = await store.get_request("c")
            assert (got.state, got.error_code, got.outbox_status) == ("CANCELLED", "CANCELLED", "cancelled")
            assert "spiffe://it/admin" in got.error_message
            assert await store.cancel("c", audit("c")) is False
            assert await store.cancel("missing", audit(None)) is False
    run(go())


def test_queue_views_and_retry_now(open_store, clock):
    async def go():
        async with open_store() as store:
            assert await store.queue_depth() == {LANE_PRIORITY: 0, LANE_STANDARD: 0}
            await put(store, "s1")
            await put(store, "s2")
            await put(store, "p1", lane=LANE_PRIORITY, kind="suspend")
            await store.claim_due(clock(), (LANE_STANDARD,), 1, "A")          # s1 sending
            await store.schedule_retry("s1", clock() + 100, "down")
            assert await store.queue_depth() == {LANE_PRIORITY: 1, LANE_STANDARD: 2}
            assert [r.request_id for r in await store.list_queue(10)] == ["p1", "s2", "s1"]
            assert [r.request_id for r in await store.list_queue(1)] == ["p1"]
            assert await store.retry_now("s1", audit("s1", "done", operation="queue-retry"))
            assert (await store.get_request("s1")).next_attempt_at == clock()
            await store.claim_due(clock(), (LANE_STANDARD,), 10, "A")
            assert await store.retry_now("s1", audit("s1")) is False           # claimed: only as an orphan
            assert await store.retry_now("s1", audit("s1"), orphaned_claim=True)
            assert (await store.get_request("s1")).outbox_status == "retry"
            await store.fail_request("s2", "X", "", "no")
            assert await store.retry_now("s2", audit("s2"), orphaned_claim=True) is False
            assert await store.queue_depth() == {LANE_PRIORITY: 1, LANE_STANDARD: 1}
    run(go())


def test_maintenance_windows_and_breaker_events(open_store):
    async def go():
        async with open_store() as store:
            await store.add_maintenance("w2", 300.0, 400.0, "upgrade", "admin", audit(None, "done"))
            await store.add_maintenance("w1", 100.0, 200.0, "patch", "config")
            await store.add_maintenance("w1", 150.0, 250.0, "patch again", "config")   # same id: replaced
            assert await store.list_maintenance(0) == [("w1", 150.0, 250.0, "patch again", "config"),
                                                       ("w2", 300.0, 400.0, "upgrade", "admin")]
            assert await store.list_maintenance(260) == [("w2", 300.0, 400.0, "upgrade", "admin")]
            await store.record_breaker_event(1.0, "open", "CAUnavailable: down")
    run(go())


# -- registrations ----------------------------------------------------------------------------------


def registration(rid: str, clock, cf: str = "RSSMRA80A01H501U", hours: float = 24) -> Registration:
    now = clock()
    return Registration(rid, "RM", cf, "Mario", "Rossi", "1980-01-01", "ab" * 32, "application/pdf", 0,
                        "spiffe://rm/ir", now, now + hours * 3600)


def test_a_registration_is_opened_once_and_used_for_one_card(open_store, clock):
    async def go():
        async with open_store() as store:
            assert await store.add_registration(registration("REG-1", clock), b"%PDF-1", audit(None, "done"))
            assert await store.add_registration(registration("REG-2", clock), b"%PDF-2", audit(None)) is False
            assert (await store.open_registration("RM", "RSSMRA80A01H501U", clock())).registration_id == "REG-1"
            assert (await store.get_registration("REG-1")).form_size == 6
            first = audit("i1", card_id="C1")
            assert await store.enqueue(rec("i1"), lane=LANE_STANDARD, payload=b"p", audit=first,
                                       registration_id="REG-1")
            assert await store.enqueue(rec("i2", profile="qualified-signature"), lane=LANE_STANDARD, payload=b"p",
                                       audit=audit("i2", card_id="C1"), registration_id="REG-1")   # same card
            reg = await store.get_registration("REG-1")
            assert (reg.card_id, reg.request_id, reg.used_operator_id) == ("C1", "i1", "op-1")
            with pytest.raises(StoreError, match="registration already used"):
                await store.enqueue(rec("i3"), lane=LANE_STANDARD, payload=b"p", audit=audit("i3", card_id="C2"),
                                    registration_id="REG-1")
            assert await store.get_request("i3") is None                       # nothing written
            assert await store.open_registration("RM", "RSSMRA80A01H501U", clock()) is None
            assert await store.cancel_registration("REG-1", by="x", audit=audit(None)) is False   # used
    run(go())


def test_registrations_cancel_expire_and_list(open_store, clock):
    async def go():
        async with open_store() as store:
            await store.add_registration(registration("REG-A", clock, hours=1), b"a", audit(None))
            clock.advance(10)
            await store.add_registration(registration("REG-B", clock, cf="VRDGPP80A01H501X"), b"b", audit(None))
            assert [r.registration_id for r in await store.list_registrations("", include_closed=False,
                                                                              now=clock(), limit=10)] == ["REG-B",
                                                                                                          "REG-A"]
            assert await store.cancel_registration("REG-B", by="spiffe://rm/ir", audit=audit(None))
            assert (await store.get_registration("REG-B")).cancelled_by == "spiffe://rm/ir"
            assert await store.cancel_registration("REG-B", by="x", audit=audit(None)) is False
            later = clock() + 7200                                             # REG-A expired
            assert await store.list_registrations("RM", include_closed=False, now=later, limit=10) == []
            assert len(await store.list_registrations("RM", include_closed=True, now=later, limit=10)) == 2
            assert await store.list_registrations("MI", include_closed=True, now=later, limit=10) == []
            with pytest.raises(StoreError, match="registration cancelled"):
                await store.enqueue(rec("i9"), lane=LANE_STANDARD, payload=b"p", audit=audit("i9", card_id="C9"),
                                    registration_id="REG-B")
    run(go())


# -- stock and audit ---------------------------------------------------------------------------------


def test_stock_ledger_and_balance(open_store, clock):
    async def go():
        async with open_store() as store:
            e = await store.add_stock("RM", 10, "first batch", audit(None, "done", operation="stock-add"),
                                      device_model="M1")
            assert (e.chamber_code, e.device_model, e.quantity, e.at) == ("RM", "M1", 10, clock())
            await store.add_stock("MI", 5, "", audit(None, "done"))
            assert [x.quantity for x in await store.list_stock()] == [10, 5]
            assert [x.quantity for x in await store.list_stock("MI")] == [5]
            await put(store, "r1")                                             # payload card_model M1
            await store.claim_due(clock(), (LANE_STANDARD,), 1, "A")
            await store.complete_issue("r1", certificate(7), "cns-auth", card_id="C1", holder_cf="X",
                                       audit=audit("r1", "done"))
            clock.advance(1)
            balance = await store.stock_balance()
            assert (balance[("RM", "M1")].sent, balance[("RM", "M1")].used, balance[("RM", "M1")].left) == (10, 1, 9)
            assert balance[("MI", "")].left == 5
    run(go())


def test_audit_rows_are_bounded_ordered_and_name_the_operator(open_store, clock):
    async def go():
        async with open_store() as store:
            await put(store, "r1")
            await store.append_audit(AuditEntry("a" * 1000, "s" * 100, "op", "r1", "t" * 1000, "ok", "d" * 1000,
                                                card_id="C" * 100, holder_cf="H" * 100))
            await store.append_audit(AuditEntry("x", "", "find", None, "", "done", operator_id="op-9", at=5.0))
            rows = await store.list_audit()
            assert [r.seq for r in rows] == sorted(r.seq for r in rows) and len(rows) == 3
            long_ = rows[1]
            for f in ("actor", "station_id", "target", "detail", "card_id", "holder_cf"):
                assert len(getattr(long_, f)) == AUDIT_LIMITS[f], f
            assert long_.operator_id == "op-1" and long_.at == clock()
            assert (rows[2].operator_id, rows[2].at, rows[2].request_id) == ("op-9", 5.0, None)
            assert [r.seq for r in await store.list_audit(after_seq=rows[0].seq, limit=1)] == [rows[1].seq]
    run(go())


# -- stations ------------------------------------------------------------------------------------------


def test_station_enrollment_ledger(open_store, clock):
    async def go():
        async with open_store() as store:
            await store.add_enrollment_code("h1", "RM", "RM-02", clock() + 3600, audit(None, "done"))
            assert await store.station_state("RM", "RM-02") == "pending"
            assert await store.find_enrollment_code("h1") == ("RM", "RM-02", clock() + 3600, None)
            assert await store.use_enrollment_code("h1", clock(), "S1", clock() + 86400, audit(None))
            assert await store.use_enrollment_code("h1", clock(), "S2", clock() + 86400, audit(None)) is False
            assert await store.station_state("RM", "RM-02") == "enrolled"
            clock.advance(1)
            assert await store.record_station_renewal("RM", "RM-02", "S3", clock() + 86400, audit(None))
            assert await store.record_station_renewal("RM", "RM-09", "S4", clock() + 86400, audit(None)) is False
            assert await store.station_serials("RM", "RM-02") == ["S1", "S3"]
            await store.mark_station_certificates_revoked(["S1"])
            (row,) = await store.list_stations("RM")
            assert row[:3] == ("RM", "RM-02", "enrolled") and row[4] == "S3" and row[6] == 1
            await store.add_enrollment_code("h2", "RM", "RM-02", clock() + 3600, audit(None))
            assert await store.station_state("RM", "RM-02") == "enrolled"   # a new code keeps it enrolled
            assert await store.revoke_station("RM", "RM-02", audit(None))
            assert await store.station_state("RM", "RM-02") == "revoked"
            assert (await store.find_enrollment_code("h2"))[3] is not None   # unused codes spent
            assert (await store.list_stations())[0][6] == 2
            assert await store.revoke_station("RM", "RM-77", audit(None)) is False
    run(go())


def test_implementations_listed():
    """The suite's parameters: the two implementations this branch ships (PostgreSQL joins in issue 17)."""
    from tests.store.conftest import STORES
    assert {"sqlite", "memory"} <= set(STORES)
    assert SqliteRequestStore is not MemoryRequestStore
