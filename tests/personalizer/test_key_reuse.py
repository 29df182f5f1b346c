"""One public key is certified once: never for two holders, nor for both profiles, nor twice (issue 10 item 6).

The broker in this event loop over the real store and embedded CA (tests/broker's ``Env``).
A key is bound when its request is accepted (request, outbox, audit and key rows: one
transaction); a request that ended without a certificate (cancelled, failed) frees it.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from personalizer.outbox.broker import RenewInput
from personalizer.errors import InvalidRequest
from personalizer.store import AuditEntry
from personalizer.outbox.windows import ServiceCalendar
from tests.broker.conftest import Env, FakeClock, issue_input
from tests.personalizer import helpers
from tests.support import keys

OTHER_CF = "VRDGPP80A01H501U"
CLOSED = ServiceCalendar(hours={d: None for d in range(7)})


def _issue(csr: bytes, *, cf: str = helpers.CF, given: str = "Mario", surname: str = "Rossi",
           profile: str = "cns-auth", card: int = 1, request_id: str | None = None):
    inp = issue_input(card, request_id=request_id)
    return dataclasses.replace(inp, csr_der=csr, codice_fiscale=cf, given_name=given, surname=surname,
                               profile=profile, ef_dati_personali=helpers.ef_dati(cf, given, surname)
                               if profile == "cns-auth" else b"")


def _renew(cert_der: bytes, csr: bytes, *, request_id: str | None = None) -> RenewInput:
    rid = request_id or str(uuid.uuid4())
    current = keys.key_for(x509.load_der_x509_certificate(cert_der).public_key())
    proof = current.sign(rid.encode() + csr, padding.PKCS1v15(), hashes.SHA256())
    return RenewInput(request_id=rid, profile="cns-auth", csr_der=csr, current_certificate_der=cert_der,
                      proof_of_possession=proof, station_id="RM-STATION-01", chamber_code="RM", operator_id="op")


def _refused(ei, *words: str) -> str:
    err = ei.value
    assert err.field == "csr_der", str(err)
    for w in words:
        assert w in err.message, err.message
    return err.message


def test_a_key_is_certified_for_one_holder_and_one_profile_only(deployment, tmp_path):
    clock = FakeClock(dt.datetime.now(dt.timezone.utc))

    async def go():
        async with Env(deployment, tmp_path, clock, ServiceCalendar(always_open=True)) as env:
            key = keys.fresh_key()
            first = await env.broker.submit_issue(_issue(helpers.csr_der(key)))
            await env.relay.run_once()
            first = await env.store.get_request(first.request_id)
            assert first.state == "ISSUED", first

            # another holder presenting the same public key: refused, without naming the first holder
            with pytest.raises(InvalidRequest) as ei:
                await env.broker.submit_issue(_issue(helpers.csr_der(key, cf=OTHER_CF, given="Giuseppe",
                                                                     surname="Verdi"),
                                                     cf=OTHER_CF, given="Giuseppe", surname="Verdi", card=2))
            message = _refused(ei, "another holder", "new key pair")
            assert helpers.CF not in message and "ROSSI" not in message.upper(), message

            # the same holder, the other profile: each profile has its own key (its own keyset on the card)
            with pytest.raises(InvalidRequest) as ei:
                await env.broker.submit_issue(_issue(helpers.csr_der(key), profile="qualified-signature"))
            _refused(ei, "cns-auth profile", "new key pair")

            # the same holder and profile in another request: a key is certified once
            with pytest.raises(InvalidRequest) as ei:
                await env.broker.submit_issue(_issue(helpers.csr_der(key), card=3))
            _refused(ei, "already certified", "new key pair")

            # the first request's retry (same id, same payload) still gets its answer
            again = await env.broker.submit_issue(_issue(helpers.csr_der(key), request_id=first.request_id))
            assert (again.state, again.serial_hex) == ("ISSUED", first.serial_hex)

            # nothing of the refused requests was written: one request, one certificate
            assert await env.store.queue_depth() == {"priority": 0, "standard": 0}
            accepted = [a for a in await env.store.list_audit() if a.result == "accepted"]
            assert [a.request_id for a in accepted] == [first.request_id]
    asyncio.run(go())


def test_renewal_needs_a_new_key_and_the_new_key_is_bound_too(deployment, tmp_path):
    clock = FakeClock(dt.datetime.now(dt.timezone.utc))

    async def go():
        async with Env(deployment, tmp_path, clock, ServiceCalendar(always_open=True)) as env:
            old = keys.fresh_key()
            first = await env.broker.submit_issue(_issue(helpers.csr_der(old)))
            await env.relay.run_once()
            first = await env.store.get_request(first.request_id)
            cert = x509.load_der_x509_certificate(first.certificate_der)
            clock.set(cert.not_valid_after_utc - dt.timedelta(days=30))

            # the card's renewal generates new keys in the spare slots: the current key is refused
            with pytest.raises(InvalidRequest) as ei:
                await env.broker.submit_renew(_renew(first.certificate_der, helpers.csr_der(old)))
            _refused(ei, "already certified", "new key pair")

            new = keys.fresh_key()
            renewal = _renew(first.certificate_der, helpers.csr_der(new))
            renewed = await env.broker.submit_renew(renewal)
            assert renewed.state in ("RECEIVED", "PENDING", "ISSUED"), renewed
            # its retry is idempotent; another renewal (another id) with the same new key is refused
            assert (await env.broker.submit_renew(renewal)).request_id == renewal.request_id
            with pytest.raises(InvalidRequest) as ei:
                await env.broker.submit_renew(_renew(first.certificate_der, helpers.csr_der(new)))
            _refused(ei, "already certified")
            # and so is an issuance for another holder with it
            with pytest.raises(InvalidRequest) as ei:
                await env.broker.submit_issue(_issue(helpers.csr_der(new, cf=OTHER_CF, given="Giuseppe",
                                                                     surname="Verdi"),
                                                     cf=OTHER_CF, given="Giuseppe", surname="Verdi", card=2))
            _refused(ei, "another holder")
    asyncio.run(go())


def test_racing_requests_with_one_key_certify_it_once(deployment, tmp_path):
    """Two stations submit the same key at once (one group commit): one is accepted, one refused."""
    clock = FakeClock(dt.datetime.now(dt.timezone.utc))

    async def go():
        async with Env(deployment, tmp_path, clock, CLOSED) as env:
            key = keys.fresh_key()
            results = await asyncio.gather(
                env.broker.submit_issue(_issue(helpers.csr_der(key), card=1)),
                env.broker.submit_issue(_issue(helpers.csr_der(key, cf=OTHER_CF, given="Giuseppe", surname="Verdi"),
                                               cf=OTHER_CF, given="Giuseppe", surname="Verdi", card=2)),
                return_exceptions=True)
            refused = [r for r in results if isinstance(r, InvalidRequest)]
            accepted = [r for r in results if not isinstance(r, BaseException)]
            assert len(refused) == 1 and len(accepted) == 1, results
            assert refused[0].field == "csr_der"
            assert await env.store.queue_depth() == {"priority": 0, "standard": 1}
    asyncio.run(go())


def test_a_cancelled_request_frees_its_key(deployment, tmp_path):
    """Central IT cancels a queued request: no certificate was made, the operator retries with the same card."""
    clock = FakeClock(dt.datetime.now(dt.timezone.utc))

    async def go():
        async with Env(deployment, tmp_path, clock, CLOSED) as env:
            key = keys.fresh_key()
            queued = await env.broker.submit_issue(_issue(helpers.csr_der(key)))
            assert await env.store.cancel(queued.request_id, AuditEntry("admin", "", "queue-cancel",
                                                                        queued.request_id, "", "done"))
            retried = await env.broker.submit_issue(_issue(helpers.csr_der(key)))
            assert retried.request_id != queued.request_id and retried.state == "RECEIVED", retried
    asyncio.run(go())


def test_keys_certified_before_the_rule_are_bound_when_the_store_opens(deployment, tmp_path):
    """A store written by an older version (no certified_keys rows): its certificates' keys are bound at open."""
    import sqlite3

    clock = FakeClock(dt.datetime.now(dt.timezone.utc))
    key = keys.fresh_key()

    async def issue_one():
        async with Env(deployment, tmp_path, clock, ServiceCalendar(always_open=True)) as env:
            first = await env.broker.submit_issue(_issue(helpers.csr_der(key)))
            await env.relay.run_once()
            assert (await env.store.get_request(first.request_id)).state == "ISSUED"
    asyncio.run(issue_one())
    db = sqlite3.connect(tmp_path / "requests.sqlite")
    with db:   # what an older version left: no binding, never back-filled
        db.execute("DROP TABLE certified_keys")
        db.execute("DELETE FROM meta WHERE key = 'certified_keys_backfilled'")
    db.close()

    async def reuse():
        async with Env(deployment, tmp_path, clock, ServiceCalendar(always_open=True)) as env:
            with pytest.raises(InvalidRequest) as ei:
                await env.broker.submit_issue(_issue(helpers.csr_der(key, cf=OTHER_CF, given="Giuseppe",
                                                                     surname="Verdi"),
                                                     cf=OTHER_CF, given="Giuseppe", surname="Verdi", card=2))
            _refused(ei, "another holder")
    asyncio.run(reuse())


def test_the_daemon_answers_key_reuse_with_invalid_argument_on_csr_der(station_stub):
    """Over gRPC + mTLS: a clear one-line INVALID_ARGUMENT naming csr_der, not the other holder."""
    import grpc

    key = keys.fresh_key()
    station_stub.SubmitIssue(helpers.issue_request(csr=helpers.csr_der(key)), timeout=30)
    other = helpers.issue_request(cf=OTHER_CF, given="Giuseppe", surname="Verdi",
                                  csr=helpers.csr_der(key, cf=OTHER_CF, given="Giuseppe", surname="Verdi"))
    with pytest.raises(grpc.RpcError) as ei:
        station_stub.SubmitIssue(other, timeout=30)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = ei.value.details()
    assert details.startswith("csr_der: ") and "another holder" in details and "\n" not in details, details
    assert helpers.CF not in details, details


def test_a_request_accepted_before_the_rule_binds_its_key_when_issued(deployment, tmp_path):
    """Queued by an older version (no key row) and issued after the upgrade: its key is bound then."""
    from personalizer.outbox.payloads import KIND_ISSUE, LANE_OF, IssuancePayload
    from personalizer.store import RequestRecord
    clock = FakeClock(dt.datetime.now(dt.timezone.utc))

    async def go():
        async with Env(deployment, tmp_path, clock, ServiceCalendar(always_open=True)) as env:
            key = keys.fresh_key()
            rid = str(uuid.uuid4())
            payload = IssuancePayload(profile="qualified-signature", csr_der=helpers.csr_der(key),
                                      codice_fiscale=helpers.CF, given_name="Mario", surname="Rossi",
                                      birth_date="1980-01-01", card_id="7420000000009999", dati_personali_hash=None)
            rec = RequestRecord(request_id=rid, kind=KIND_ISSUE, profile="qualified-signature",
                                payload_sha256=uuid.uuid4().bytes, chamber_code="RM", station_id="RM-STATION-01",
                                operator_id="op-1")
            assert await env.store.enqueue(rec, lane=LANE_OF[KIND_ISSUE], payload=payload.encode(),
                                           audit=AuditEntry("test", "RM-STATION-01", KIND_ISSUE, rid, "", "accepted"))
            await env.relay.run_once()
            assert (await env.store.get_request(rid)).state == "ISSUED"
            with pytest.raises(InvalidRequest) as ei:
                await env.broker.submit_issue(_issue(helpers.csr_der(key)))
            _refused(ei, "qualified-signature profile")
    asyncio.run(go())
