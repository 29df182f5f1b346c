"""CRL and OCSP publication checked by independent tools: openssl verify/ocsp and pkilint.

One embedded CA and one ``PkiPublisher`` (real HTTP on loopback) per module,
on an event loop in a background thread so the blocking tools can run here.
Three certificates: one active, one revoked (keyCompromise), one on hold.
"""
from __future__ import annotations

import asyncio
import threading
import urllib.request

import pytest
from cryptography import x509

from personalizer.pki import PkiPublisher
from personalizer.pki.crl import OID_EXPIRED_CERTS_ON_CRL
from tests.ca import support

SEVERITY = "WARNING"   # pkilint exit code counts findings at or above this


class Loop:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-pki-loop", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pki")
    loop = Loop()
    ca = support.make_ca(support.ca_dir(tmp))
    pub = PkiPublisher(ca, crl_dir=tmp / "crl", http_host="127.0.0.1", http_port=0, refresh_seconds=3600)

    async def setup():
        certs = {}
        for name in ("active", "revoked", "held"):
            issued = await ca.issue("cns-auth", support.csr(), support.SUBJECT, f"pub-{name}")
            certs[name] = issued
        await ca.revoke(certs["revoked"].ref, "keyCompromise")
        await ca.suspend(certs["held"].ref)
        await pub.start()
        return certs

    certs = loop.run(setup())
    files = {}
    for name, issued in certs.items():
        p = tmp / f"{name}.pem"
        p.write_bytes(support.pem(x509.load_der_x509_certificate(issued.certificate_der)))
        files[name] = p
    (tmp / "issuing.pem").write_bytes(support.pem(ca.issuing_certificate))
    (tmp / "root.pem").write_bytes(support.pem(ca.root_certificate))
    (tmp / "trust.pem").write_bytes(support.pem(ca.root_certificate) + support.pem(ca.issuing_certificate))
    yield dict(tmp=tmp, loop=loop, ca=ca, pub=pub, certs=certs, files=files)
    loop.run(pub.stop())
    loop.run(ca.close())
    loop.close()


def _verify(pki, name):
    t = pki["tmp"]
    return support.run("openssl", "verify", "-crl_check", "-CAfile", t / "root.pem", "-untrusted", t / "issuing.pem",
                       "-CRLfile", pki["pub"].crl_pem_path, pki["files"][name])


def test_crl_file_content(pki):
    crl = x509.load_der_x509_crl(pki["pub"].crl_path.read_bytes())
    assert crl.is_signature_valid(pki["ca"].issuing_certificate.public_key())
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number >= 1
    crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    crl.extensions.get_extension_for_oid(OID_EXPIRED_CERTS_ON_CRL)
    assert crl.next_update_utc - crl.last_update_utc <= pki["pub"].refresh + x509_margin()
    reasons = {f"{r.serial_number:X}": r.extensions.get_extension_for_class(x509.CRLReason).value.reason
               for r in crl}
    certs = pki["certs"]
    assert reasons == {certs["revoked"].ref.serial_hex: x509.ReasonFlags.key_compromise,
                       certs["held"].ref.serial_hex: x509.ReasonFlags.certificate_hold}


def x509_margin():
    from personalizer.pki.crl import NEXT_UPDATE_MARGIN
    return NEXT_UPDATE_MARGIN


def test_openssl_verify_with_crl(pki):
    ok = _verify(pki, "active")
    assert ok.returncode == 0 and ": OK" in ok.stdout, ok.stdout + ok.stderr
    for name in ("revoked", "held"):
        bad = _verify(pki, name)
        assert bad.returncode != 0 and "certificate revoked" in bad.stdout + bad.stderr, bad.stdout + bad.stderr


def _ocsp(pki, name, path="/ocsp"):
    t = pki["tmp"]
    out = t / f"{name}.ocsp.der"
    r = support.run("openssl", "ocsp", "-issuer", t / "issuing.pem", "-cert", pki["files"][name],
                    "-url", f"http://127.0.0.1:{pki['pub'].port}{path}", "-CAfile", t / "trust.pem",
                    "-respout", out)
    return r, out


def test_openssl_ocsp_answers(pki):
    good, _ = _ocsp(pki, "active", path="/")   # the AIA URL in certificates is a bare host
    assert "Response verify OK" in good.stderr + good.stdout and ": good" in good.stdout, good.stdout + good.stderr
    revoked, _ = _ocsp(pki, "revoked")
    assert ": revoked" in revoked.stdout and "keyCompromise" in revoked.stdout, revoked.stdout
    assert "Response verify OK" in revoked.stderr + revoked.stdout
    held, _ = _ocsp(pki, "held")
    assert ": revoked" in held.stdout and "certificateHold" in held.stdout, held.stdout
    assert "Response verify OK" in held.stderr + held.stdout


def test_reactivation_reaches_crl_and_ocsp_after_publish_now(pki):
    ca, pub, ref = pki["ca"], pki["pub"], pki["certs"]["held"].ref
    number_before = x509.load_der_x509_crl(pub.crl_path.read_bytes()).extensions.get_extension_for_class(
        x509.CRLNumber).value.crl_number
    pki["loop"].run(ca.reactivate(ref))
    r, _ = _ocsp(pki, "held")
    assert ": good" in r.stdout, r.stdout   # OCSP is live
    pki["loop"].run(pub.publish_now())
    crl = x509.load_der_x509_crl(pub.crl_path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(ref.serial_hex, 16)) is None
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > number_before
    assert _verify(pki, "held").returncode == 0
    pki["loop"].run(ca.suspend(ref))
    pki["loop"].run(pub.publish_now())
    assert _verify(pki, "held").returncode != 0


def test_crl_served_over_http_matches_the_file(pki):
    pub = pki["pub"]
    with urllib.request.urlopen(f"http://127.0.0.1:{pub.port}/crl/{pub.crl_name}.crl", timeout=10) as resp:
        assert resp.headers["Content-Type"] == "application/pkix-crl"
        assert resp.read() == pub.crl_path.read_bytes()
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(f"http://127.0.0.1:{pub.port}/crl/other.crl", timeout=10)
    assert exc.value.code == 404


def test_ocsp_get_and_foreign_issuer(pki):
    import base64
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import ocsp
    ca, pub = pki["ca"], pki["pub"]
    leaf = x509.load_der_x509_certificate(pki["certs"]["revoked"].certificate_der)
    req = ocsp.OCSPRequestBuilder().add_certificate(leaf, ca.issuing_certificate, hashes.SHA256()).build()
    b64 = base64.b64encode(req.public_bytes(serialization.Encoding.DER)).decode()
    with urllib.request.urlopen(f"http://127.0.0.1:{pub.port}/ocsp/{urllib.parse.quote(b64, safe='')}",
                                timeout=10) as resp:
        answer = ocsp.load_der_ocsp_response(resp.read())
    assert answer.certificate_status is ocsp.OCSPCertStatus.REVOKED
    # a request naming another issuer (the root) is unauthorized, not answered
    foreign = ocsp.OCSPRequestBuilder().add_certificate(leaf, ca.root_certificate, hashes.SHA1()).build()
    http_req = urllib.request.Request(f"http://127.0.0.1:{pub.port}/ocsp",
                                      data=foreign.public_bytes(serialization.Encoding.DER),
                                      headers={"Content-Type": "application/ocsp-request"})
    with urllib.request.urlopen(http_req, timeout=10) as resp:
        assert ocsp.load_der_ocsp_response(resp.read()).response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED
    http_req = urllib.request.Request(f"http://127.0.0.1:{pub.port}/ocsp", data=b"\x30\x03garbage")
    with urllib.request.urlopen(http_req, timeout=10) as resp:
        assert ocsp.load_der_ocsp_response(resp.read()).response_status is \
            ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_pkilint_crl(pki):
    r = support.run(support.VENV_BIN / "lint_crl", "lint", "-t", "CRL", "-p", "PKIX", "-s", SEVERITY,
                    pki["pub"].crl_path)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("name", ["active", "revoked"])
def test_pkilint_ocsp_response(pki, name):
    _, out = _ocsp(pki, name)
    r = support.run(support.VENV_BIN / "lint_ocsp_response", "lint", "-s", SEVERITY, out)
    assert r.returncode == 0, r.stdout + r.stderr
