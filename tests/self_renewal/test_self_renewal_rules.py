"""Holder self-renewal at the personalizer (personalizer.edge.self_renewal): accepted in the window with the card's
proof, audited as the holder with mode self-renewal; refused — one audit row each — for a suspended, revoked or
expired certificate, outside the window, beyond the device life, a bad proof and a replayed proof."""
from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from personalizer.outbox.broker import ChangeInput, RenewalRules
from personalizer.ca.base import CertRef
from personalizer.errors import FailedPrecondition, InvalidRequest, NotFound, RequestConflict
from personalizer.edge.self_renewal import SelfRenewal
from personalizer.outbox.windows import ServiceCalendar
from tests.broker.conftest import FakeClock, issue_input
from tests.personalizer import helpers

HOLDER = f"holder:{helpers.CF}"


def _args(cert_der: bytes, *, request_id: str | None = None, key=None) -> dict:
    rid = request_id or f"renew-{uuid.uuid4()}-CNS0"
    csr = helpers.csr_der()
    proof = (key or helpers.key_of(cert_der)).sign(rid.encode() + csr, padding.PKCS1v15(), hashes.SHA256())
    return dict(request_id=rid, profile="cns-auth", csr_der=csr, current_certificate_der=cert_der,
                proof_of_possession=proof)


async def _refused_rows(env) -> list:
    return [a for a in await env.store.list_audit() if a.operation == "self-renew"]


async def _issued(env, clock, n: int):
    rec = await env.broker.submit_issue(issue_input(n))
    await env.relay.run_once()
    rec = await env.store.get_request(rec.request_id)
    cert = x509.load_der_x509_certificate(rec.certificate_der)
    return rec, cert


def _run(make_env, body):
    clock = FakeClock(dt.datetime.now(dt.timezone.utc))

    async def go():
        async with make_env(clock, calendar=ServiceCalendar(always_open=True)) as env:
            await body(env, clock, SelfRenewal(env.broker))
    asyncio.run(go())


def test_self_renewal_accepted_as_the_holder(make_env):
    async def body(env, clock, sr):
        first, cert = await _issued(env, clock, 41)
        clock.set(cert.not_valid_after_utc - dt.timedelta(days=30))
        args = _args(first.certificate_der)
        rec = await sr.renew(**args)
        await env.relay.run_once()
        rec = await env.store.get_request(rec.request_id)
        assert rec.state == "ISSUED" and rec.kind == "renew"
        assert rec.operator_id == HOLDER and rec.station_id == "self-renewal"
        assert rec.chamber_code == first.chamber_code == "RM"
        new = x509.load_der_x509_certificate(rec.certificate_der)
        assert new.subject == cert.subject and new.serial_number != cert.serial_number
        rows = [a for a in await env.store.list_audit() if a.request_id == rec.request_id and a.result == "accepted"]
        assert len(rows) == 1 and rows[0].actor == HOLDER and rows[0].detail == "mode self-renewal"
        # a replayed proof: the same request again is the idempotent retry (same request, no second
        # certificate); the same proof under another request id does not verify
        again = await sr.renew(**args)
        assert again.request_id == rec.request_id and again.serial_hex == rec.serial_hex
        replay = dict(args, request_id=f"renew-{uuid.uuid4()}-CNS0")
        with pytest.raises(InvalidRequest, match="proof_of_possession"):
            await sr.renew(**replay)
        # ... nor with the same id and another CSR
        with pytest.raises(RequestConflict):
            await sr.renew(**dict(args, csr_der=helpers.csr_der()))
        assert len(await _refused_rows(env)) == 2
        # reads: only with the certificate renewed (its holder), only self-renewal requests
        assert (await sr.readable(rec.request_id, first.certificate_der)).request_id == rec.request_id
        with pytest.raises(NotFound):
            await sr.readable(first.request_id, first.certificate_der)   # an operator's issuance
        with pytest.raises(NotFound):   # a look-alike certificate naming the holder, not issued here
            await sr.readable(rec.request_id, _foreign_cert_der())
    _run(make_env, body)


@pytest.mark.parametrize("case", ["outside-window", "bad-proof", "device-life", "suspended", "revoked",
                                  "expired", "not-ours"])
def test_self_renewal_refused_with_one_audit_row(make_env, case):
    async def body(env, clock, sr):
        first, cert = await _issued(env, clock, 42)
        ref = CertRef(first.issuer_dn, first.serial_hex)
        if case != "outside-window":
            clock.set(cert.not_valid_after_utc - dt.timedelta(days=30))
        args = _args(first.certificate_der)
        expect: tuple = (FailedPrecondition, "")
        if case == "outside-window":
            expect = (FailedPrecondition, "renewal opens")
        elif case == "bad-proof":
            args = _args(first.certificate_der, key=helpers.rsa_key(2048))
            expect = (InvalidRequest, "proof_of_possession")
        elif case == "device-life":
            env.broker._renewal = RenewalRules(window_days=90, device_life_years=3)
            expect = (FailedPrecondition, "beyond the device's 3-year life")
        elif case in ("suspended", "revoked"):
            kind, reason = ("suspend", "") if case == "suspended" else ("revoke", "keyCompromise")
            await env.broker.submit_change(ChangeInput(f"c-{case}", kind, ref, reason, "RM-STATION-01", "RM", "op"))
            await env.relay.run_once()
            expect = (FailedPrecondition, case)
        elif case == "expired":
            clock.set(cert.not_valid_after_utc + dt.timedelta(days=1))
            expect = (FailedPrecondition, "expired")
        elif case == "not-ours":
            args = dict(args, current_certificate_der=_foreign_cert_der())
            expect = (FailedPrecondition, "not one this CA issued")
        with pytest.raises(expect[0], match=expect[1]):
            await SelfRenewal(env.broker).renew(**args)
        rows = await _refused_rows(env)
        assert len(rows) == 1, rows
        assert rows[0].result.startswith("refused:") and rows[0].request_id == args["request_id"]
        assert rows[0].actor == (HOLDER if case != "not-ours" else "holder:unknown")
        assert await env.store.get_request(args["request_id"]) is None     # nothing queued
    _run(make_env, body)


def _foreign_cert_der() -> bytes:
    key = helpers.rsa_key(2048)
    name = x509.Name([x509.NameAttribute(x509.NameOID.SERIAL_NUMBER, f"TINIT-{helpers.CF}")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256()))
    from cryptography.hazmat.primitives.serialization import Encoding
    return cert.public_bytes(Encoding.DER)


def test_holder_revokes_only_the_renewals_own_certificates(make_env):
    """RevokeOwn: no proof of the card is asked, so it must never reach an active certificate nobody replaced,
    nor a self-renewal's certificate without its request id; each refusal is one audit row."""
    from personalizer.errors import PermissionDenied

    async def body(env, clock, sr):
        first, cert = await _issued(env, clock, 43)
        old = CertRef(first.issuer_dn, first.serial_hex)
        with pytest.raises(PermissionDenied, match="not superseded by a self-renewal"):
            await sr.revoke_own(request_id=f"undo-{first.serial_hex}", ref=old, reason="superseded")
        with pytest.raises(PermissionDenied, match="own self-renewal issued"):
            await sr.revoke_own(request_id=f"undo-{first.request_id}", ref=old, reason="cessationOfOperation")
        with pytest.raises(InvalidRequest, match="reason"):
            await sr.revoke_own(request_id="undo-x", ref=old, reason="keyCompromise")
        assert len([a for a in await env.store.list_audit() if a.operation == "self-renew-revoke"]) == 3
        assert (await env.ca.status(old)).state.value == "active"
        clock.set(cert.not_valid_after_utc - dt.timedelta(days=30))
        rec = await sr.renew(**_args(first.certificate_der))
        await env.relay.run_once()
        rec = await env.store.get_request(rec.request_id)
        new = CertRef(rec.issuer_dn, rec.serial_hex)
        # the new certificate is not "superseded" by the old one, and without its request id it stays active
        with pytest.raises(PermissionDenied):
            await sr.revoke_own(request_id=f"undo-{rec.serial_hex}", ref=new, reason="superseded")
        with pytest.raises(PermissionDenied):
            await sr.revoke_own(request_id="undo-guess", ref=new, reason="cessationOfOperation")
        # the replaced one is, now that a self-renewal issued its successor
        change, info = await sr.revoke_own(request_id=f"undo-{first.serial_hex}", ref=old, reason="superseded")
        await env.relay.run_once()
        assert (await env.ca.status(old)).state.value == "revoked"
        assert (await env.ca.status(new)).state.value == "active"
        assert change.operator_id == HOLDER
    _run(make_env, body)


def test_unknown_profile_refused_with_one_audit_row(make_env):
    async def body(env, clock, sr):
        first, cert = await _issued(env, clock, 44)
        clock.set(cert.not_valid_after_utc - dt.timedelta(days=30))
        args = dict(_args(first.certificate_der), profile=99)
        with pytest.raises(InvalidRequest, match="profile"):
            await sr.renew(**args)
        assert len(await _refused_rows(env)) == 1
    _run(make_env, body)
