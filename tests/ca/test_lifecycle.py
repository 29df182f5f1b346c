"""Embedded CA lifecycle: issue idempotency, suspend / reactivate / revoke, invalid transitions, restart."""
from __future__ import annotations

import asyncio

import pytest

from personalizer.ca.base import CertRef, CertState, IssuedCertificate
from personalizer.ca.errors import InvalidTransition
from personalizer.ca.index import DB_NAME
from personalizer.errors import InvalidRequest, NotFound, RequestConflict
from tests.ca import support


def _run(coro):
    return asyncio.run(coro)


async def _issue(ca, request_id: str, profile: str = "cns-auth") -> IssuedCertificate:
    return await ca.issue(profile, support.csr(), support.SUBJECT, request_id)


def test_issue_twice_returns_the_first_certificate(tmp_path):
    async def go():
        ca = support.make_ca(support.ca_dir(tmp_path))
        first = await _issue(ca, "req-1")
        again = await _issue(ca, "req-1")
        both = await asyncio.gather(_issue(ca, "req-2"), _issue(ca, "req-2"))
        found = await ca.find_issued("req-1")
        missing = await ca.find_issued("never")
        await ca.close()
        return first, again, both, found, missing

    first, again, both, found, missing = _run(go())
    assert again.certificate_der == first.certificate_der and again.ref == first.ref
    assert both[0].ref == both[1].ref
    assert found is not None and found.ref == first.ref and found.chain_der == first.chain_der
    assert missing is None


def test_same_request_id_with_another_profile_is_a_conflict(tmp_path):
    async def go():
        ca = support.make_ca(support.ca_dir(tmp_path))
        try:
            await _issue(ca, "req-x")
            with pytest.raises(RequestConflict):
                await _issue(ca, "req-x", "qualified-signature")
        finally:
            await ca.close()
    _run(go())


def test_transitions(tmp_path):
    async def go():
        ca = support.make_ca(support.ca_dir(tmp_path))
        ref = (await _issue(ca, "life-1")).ref
        states = [(await ca.status(ref)).state]
        held = await ca.suspend(ref)
        states.append(held.state)
        with pytest.raises(InvalidTransition, match="suspend"):
            await ca.suspend(ref)
        states.append((await ca.reactivate(ref)).state)
        with pytest.raises(InvalidTransition, match="only a suspended"):
            await ca.reactivate(ref)
        await ca.suspend(ref)
        revoked = await ca.revoke(ref, "keyCompromise")
        states.append(revoked.state)
        with pytest.raises(InvalidTransition) as exc:
            await ca.reactivate(ref)
        for op in (ca.suspend(ref), ca.revoke(ref, "superseded")):
            with pytest.raises(InvalidTransition):
                await op
        await ca.close()
        return states, held, revoked, exc.value

    states, held, revoked, err = _run(go())
    assert states == [CertState.ACTIVE, CertState.SUSPENDED, CertState.ACTIVE, CertState.REVOKED]
    assert held.revocation_reason == "certificateHold" and held.revoked_at is not None
    assert revoked.revocation_reason == "keyCompromise" and revoked.request_id == "life-1"
    assert err.code == "FAILED_PRECONDITION" and err.state == "revoked"


def test_reason_names_and_unknown_certificates(tmp_path):
    async def go():
        ca = support.make_ca(support.ca_dir(tmp_path))
        ref = (await _issue(ca, "r-1")).ref
        with pytest.raises(InvalidRequest, match="unknown revocation reason"):
            await ca.revoke(ref, "lostIt")
        with pytest.raises(InvalidRequest, match="use suspend"):
            await ca.revoke(ref, "certificateHold")
        info = await ca.revoke(ref, "CESSATION_OF_OPERATION")   # EJBCA spelling accepted too
        with pytest.raises(NotFound):
            await ca.suspend(CertRef(ref.issuer_dn, "ABCDEF"))
        other = await ca.status(CertRef("CN=Someone Else", ref.serial_hex))
        padded = await ca.status(CertRef(ref.issuer_dn, "00" + ref.serial_hex.lower()))
        await ca.close()
        return info, other, padded

    info, other, padded = _run(go())
    assert info.revocation_reason == "cessationOfOperation"
    assert other is None
    assert padded is not None and padded.state is CertState.REVOKED


def test_index_survives_a_restart(tmp_path):
    d = support.ca_dir(tmp_path)

    async def first():
        ca = support.make_ca(d)
        a = await _issue(ca, "keep-1")
        b = await _issue(ca, "keep-2")
        await ca.suspend(b.ref)
        n = await ca.next_crl_number()
        await ca.close()
        return a, b, n

    async def second(a, b):
        ca = support.make_ca(d)
        again = await _issue(ca, "keep-1")
        st = await ca.status(b.ref)
        n = await ca.next_crl_number()
        responder = (await ca.ocsp_responder()).certificate
        await ca.close()
        return again, st, n, responder

    a, b, n1 = _run(first())
    assert (d / DB_NAME).exists()
    responder_before = (d / "ocsp-responder.pem").read_bytes()
    again, st, n2, responder = _run(second(a, b))
    assert again.certificate_der == a.certificate_der
    assert st.state is CertState.SUSPENDED
    assert n2 == n1 + 1
    assert support.pem(responder) == responder_before   # reused, not re-issued


def test_responder_certificate_profile(tmp_path):
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    async def go():
        ca = support.make_ca(support.ca_dir(tmp_path))
        ident = await ca.ocsp_responder()
        await ca.close()
        return ident.certificate, ca.issuing_certificate

    cert, issuing = _run(go())
    cert.verify_directly_issued_by(issuing)
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.OCSP_SIGNING]
    cert.extensions.get_extension_for_class(x509.OCSPNoCheck)
