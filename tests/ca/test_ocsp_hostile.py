"""OCSP answers hostile requests with malformedRequest (never an exception, i.e. never HTTP 500).

Requests are built with asn1crypto, which (unlike cryptography's builder) lets us write what an
attacker sends: a negative or oversized serial, two nonces, an oversized nonce.
"""
from __future__ import annotations

import asyncio

import pytest
from asn1crypto import core, ocsp as aocsp
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp

from personalizer.pki import ocsp as ocsp_mod
from tests.ca import support


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    ca = support.make_ca(None, template=support.ca_dir(tmp_path_factory.mktemp("ocsp-hostile")))
    yield ca
    asyncio.run(ca.close())   # its index connection's worker thread would outlive the run (it hung after the summary)


def _request(ca, serial: int, nonces=(), *, requests: int = 1) -> bytes:
    name_hash, key_hash = ocsp_mod._issuer_hashes(ca.issuing_certificate, hashes.SHA256())
    cert_id = {"hash_algorithm": {"algorithm": "sha256"}, "issuer_name_hash": name_hash,
               "issuer_key_hash": key_hash, "serial_number": serial}
    tbs = {"request_list": [{"req_cert": cert_id}] * requests}
    if nonces:
        tbs["request_extensions"] = [{"extn_id": "nonce", "critical": False, "extn_value": core.OctetString(n)}
                                     for n in nonces]
    return aocsp.OCSPRequest({"tbs_request": tbs}).dump()


def _status(ca, der: bytes) -> ocsp.OCSPResponseStatus:
    async def go():
        return await ocsp_mod.respond(der, issuing=ca.issuing_certificate, responder=await ca.ocsp_responder(),
                                      lookup=ca.status_by_serial)
    return ocsp.load_der_ocsp_response(asyncio.run(go())).response_status


@pytest.mark.parametrize("serial,nonces,requests", [
    (-5, (), 1),                        # negative serial
    (1 << 200, (), 1),                  # serial over 20 octets
    (1234, (b"a" * 16, b"b" * 16), 1),  # two nonces
    (1234, (b"n" * 33,), 1),            # nonce over 32 octets (RFC 8954)
    (1234, (b"n" * 60_000,), 1),        # a huge one
    (1234, (b"",), 1),                  # empty nonce
    (1234, (), 2),                      # two requests in one
])
def test_hostile_requests_get_malformed_request(ca, serial, nonces, requests):
    assert _status(ca, _request(ca, serial, nonces, requests=requests)) is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_a_well_formed_request_with_a_nonce_is_answered_and_echoed(ca):
    der = _request(ca, 1234, (b"x" * 32,))

    async def go():
        return await ocsp_mod.respond(der, issuing=ca.issuing_certificate, responder=await ca.ocsp_responder(),
                                      lookup=ca.status_by_serial)
    resp = ocsp.load_der_ocsp_response(asyncio.run(go()))
    assert resp.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert resp.certificate_status is ocsp.OCSPCertStatus.UNKNOWN
    from cryptography import x509
    assert resp.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"x" * 32


def test_ocsp_signing_does_not_stall_the_event_loop(ca):
    """A burst of OCSP requests: the loop that also serves gRPC stays responsive while the responder signs
    (measured against inline signing in the same run: the worst gap between 1 ms ticks)."""
    import time

    der = _request(ca, 1234, (b"x" * 16,))

    async def burst(sign_on) -> float:
        responder = await ca.ocsp_responder()
        worst, stop = 0.0, asyncio.Event()

        async def ticker():
            nonlocal worst
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                worst, last = max(worst, now - last), now

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        kwargs = {} if sign_on == "default" else {"sign_on": None}
        answers = await asyncio.gather(*(ocsp_mod.respond(der, issuing=ca.issuing_certificate, responder=responder,
                                                          lookup=ca.status_by_serial, **kwargs) for _ in range(300)))
        stop.set()
        await tick
        assert all(ocsp.load_der_ocsp_response(a).response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
                   for a in answers)
        return worst

    inline = asyncio.run(burst(None))
    pooled = min(asyncio.run(burst("default")) for _ in range(2))   # the better of two: a busy machine adds noise
    print(f"worst event-loop gap: inline {inline * 1000:.1f} ms, on the signing threads {pooled * 1000:.1f} ms")
    assert pooled < inline / 2, (pooled, inline)
