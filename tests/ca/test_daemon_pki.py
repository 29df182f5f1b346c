"""Acceptance: CRL and OCSP publication by the running daemon (``cns-personalizer serve`` with
``[pki] enabled``), judged by independent tools.

Certificates are issued, suspended, revoked and reactivated over gRPC with mTLS (station and admin
certificates of a ``cns-personalizer init`` deployment); then the CRL is fetched over HTTP (at the
path the certificates' CRL distribution point names) and read from ``crl_dir`` on disk, and checked
with ``openssl verify -crl_check``, ``openssl ocsp`` against the daemon's OCSP URL, and pkilint's
CRL (PKIX) and OCSP lints. The daemon runs with the longest refresh interval the configuration
accepts, so the nextUpdate check covers the worst case.
"""
from __future__ import annotations

import datetime as dt
import re
import shutil
import time
import urllib.parse
import urllib.request
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from personalizer import config, deploy
from personalizer.pki.crl import MAX_REFRESH
from proto.cns.v1 import personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc
from tests.ca import support
from tests.personalizer import helpers

TIMEOUT = 20
PUBLISH_DEADLINE_SECONDS = 60     # a hang guard, not a speed claim (SLA4.3 allows 2 hours)
SEVERITY = "WARNING"              # pkilint: exit code = findings at or above this
PKI_RE = re.compile(r"pki on port (\d+)")


def _pki_toml(refresh_seconds: int) -> str:
    return f"""
[pki]
enabled = true
http_host = "127.0.0.1"
http_port = 0
crl_dir = "crl"
refresh_seconds = {refresh_seconds}
"""


def _start(root, refresh_seconds: int):
    cfg_path = root / "personalizer.toml"
    cfg_path.write_text(cfg_path.read_text() + _pki_toml(refresh_seconds))
    d = helpers.DaemonProcess(cfg_path)
    m = PKI_RE.search(d.proc.stdout.readline())
    if not m:
        d.stop()
        raise AssertionError("the daemon did not report its PKI port")
    d.pki_port = int(m.group(1))
    d.cfg = config.load(cfg_path)
    return d


@pytest.fixture(scope="module")
def pki_daemon(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki-daemon") / "cns"
    dep = deploy.init_deployment(root, listen="127.0.0.1:0", ca_key_bits=2048)
    d = _start(root, config.MAX_CRL_REFRESH_SECONDS)
    tls = root / "tls"
    station = helpers.channel(d.port, tls, helpers.ClientCert((root / "stations/RM-STATION-01/client.pem").read_bytes(),
                                                              (root / "stations/RM-STATION-01/client.key.pem").read_bytes()))
    admin = helpers.channel(d.port, tls, helpers.ClientCert((root / "admin/client.pem").read_bytes(),
                                                            (root / "admin/client.key.pem").read_bytes()))
    work = root / "work"
    work.mkdir()
    (work / "trust.pem").write_bytes(dep.root_cert.read_bytes() + dep.issuing_cert.read_bytes())
    yield dict(daemon=d, dep=dep, station=pb_grpc.PersonalizerStub(station), admin=pb_grpc.PersonalizerStub(admin),
               work=work)
    station.close()
    admin.close()
    assert d.stop() == 0


def _http(port: int, path: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return resp.read(), resp.headers["Content-Type"]


def _crl_path_of(cert: x509.Certificate) -> str:
    dp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    return urllib.parse.urlsplit(dp[0].full_name[0].value).path


def _number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def _wait_for_crl(port: int, path: str, accept) -> x509.CertificateRevocationList:
    deadline = time.monotonic() + PUBLISH_DEADLINE_SECONDS
    while True:
        crl = x509.load_der_x509_crl(_http(port, path)[0])
        if accept(crl):
            return crl
        assert time.monotonic() < deadline, "the daemon never published the expected CRL"
        time.sleep(0.1)


def _change(stub_call, ref, reason=""):
    return stub_call(pb.ChangeStatusRequest(request_id=str(uuid.uuid4()), certificate=ref, reason=reason),
                     timeout=TIMEOUT)


def _verify(env, cert_file, crl_file):
    return support.run("openssl", "verify", "-crl_check", "-CAfile", env["dep"].root_cert,
                       "-untrusted", env["dep"].issuing_cert, "-CRLfile", crl_file, cert_file)


def _ocsp(env, name, cert_file):
    out = env["work"] / f"{name}.ocsp.der"
    # the OCSP URL in the certificates' AIA is a bare host: ask at "/" as a relying party would
    r = support.run("openssl", "ocsp", "-issuer", env["dep"].issuing_cert, "-cert", cert_file,
                    "-url", f"http://127.0.0.1:{env['daemon'].pki_port}/", "-CAfile", env["work"] / "trust.pem",
                    "-respout", out)
    assert "Response verify OK" in r.stdout + r.stderr, r.stdout + r.stderr
    return r.stdout, out


def test_revocation_and_suspension_reach_crl_and_ocsp(pki_daemon):
    env, d = pki_daemon, pki_daemon["daemon"]
    issued = {}
    for name in ("good", "revoked", "held"):
        r = env["station"].SubmitIssue(helpers.issue_request(), timeout=TIMEOUT)
        assert r.state == pb.REQUEST_STATE_ISSUED, r
        issued[name] = r
    certs = {n: x509.load_der_x509_certificate(r.certificate_der) for n, r in issued.items()}
    files = {}
    for n, c in certs.items():
        files[n] = env["work"] / f"{n}.pem"
        files[n].write_bytes(c.public_bytes(serialization.Encoding.PEM))
    crl_path = _crl_path_of(certs["good"])
    before = x509.load_der_x509_crl(_http(d.pki_port, crl_path)[0])
    assert before.get_revoked_certificate_by_serial_number(certs["revoked"].serial_number) is None

    r = _change(env["admin"].Revoke, issued["revoked"].certificate, "keyCompromise")
    assert r.change_state == pb.REQUEST_STATE_DONE and r.status == pb.CERTIFICATE_STATUS_REVOKED
    r = _change(env["admin"].Suspend, issued["held"].certificate)
    assert r.change_state == pb.REQUEST_STATE_DONE and r.status == pb.CERTIFICATE_STATUS_SUSPENDED
    serials = {n: c.serial_number for n, c in certs.items()}

    # published without waiting for the periodic refresh (hours away): the change itself triggers it
    crl = _wait_for_crl(d.pki_port, crl_path, lambda c: all(
        c.get_revoked_certificate_by_serial_number(serials[n]) is not None for n in ("revoked", "held")))
    assert _number(crl) > _number(before)
    issuing = x509.load_pem_x509_certificate(env["dep"].issuing_cert.read_bytes())
    assert crl.is_signature_valid(issuing.public_key()) and crl.issuer == issuing.subject
    reasons = {r.serial_number: r.extensions.get_extension_for_class(x509.CRLReason).value.reason for r in crl}
    assert reasons == {serials["revoked"]: x509.ReasonFlags.key_compromise,
                       serials["held"]: x509.ReasonFlags.certificate_hold}
    assert crl.get_revoked_certificate_by_serial_number(serials["good"]) is None
    # SLA4.3: the CRL promises its successor within 2 hours, even at the longest configurable refresh
    assert crl.next_update_utc - crl.last_update_utc <= MAX_REFRESH
    assert d.cfg.pki.refresh_seconds == config.MAX_CRL_REFRESH_SECONDS

    # the same CRL on disk (DER and PEM) as over HTTP, once no publication is pending
    crl_dir = d.cfg.pki.crl_dir
    disk_der = crl_dir / "cns-issuing-ca.crl"
    deadline = time.monotonic() + PUBLISH_DEADLINE_SECONDS
    while True:   # a publication triggered by the second change may still be landing
        on_disk = disk_der.read_bytes()
        latest, ctype = _http(d.pki_port, crl_path)
        if on_disk == latest or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert ctype == "application/pkix-crl" and on_disk == latest
    disk_crl = x509.load_pem_x509_crl((crl_dir / "cns-issuing-ca.pem").read_bytes())
    assert disk_crl.public_bytes(serialization.Encoding.DER) == latest

    # openssl verify -crl_check with the CRL from disk, and with the one fetched over HTTP
    (env["work"] / "http.crl.pem").write_bytes(x509.load_der_x509_crl(latest).public_bytes(serialization.Encoding.PEM))
    for crl_file in (crl_dir / "cns-issuing-ca.pem", env["work"] / "http.crl.pem"):
        ok = _verify(env, files["good"], crl_file)
        assert ok.returncode == 0 and ": OK" in ok.stdout, ok.stdout + ok.stderr
        for n in ("revoked", "held"):
            bad = _verify(env, files[n], crl_file)
            assert bad.returncode != 0 and "certificate revoked" in bad.stdout + bad.stderr, bad.stdout + bad.stderr

    # openssl ocsp against the daemon's OCSP responder
    out, good_der = _ocsp(env, "good", files["good"])
    assert f"{files['good']}: good" in out, out
    out, revoked_der = _ocsp(env, "revoked", files["revoked"])
    assert ": revoked" in out and "keyCompromise" in out, out
    out, held_der = _ocsp(env, "held", files["held"])
    assert ": revoked" in out and "certificateHold" in out, out

    # pkilint: the CRL the daemon serves (PKIX) and its OCSP answers report nothing at WARNING or above
    lint = support.run(support.VENV_BIN / "lint_crl", "lint", "-t", "CRL", "-p", "PKIX", "-s", SEVERITY, disk_der)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    for der in (good_der, revoked_der, held_der):
        lint = support.run(support.VENV_BIN / "lint_ocsp_response", "lint", "-s", SEVERITY, der)
        assert lint.returncode == 0, lint.stdout + lint.stderr

    # the issuing CA certificate is served where the certificates' AIA caIssuers points
    aia = certs["good"].extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    ca_issuers = next(a.access_location.value for a in aia
                      if a.access_method == x509.oid.AuthorityInformationAccessOID.CA_ISSUERS)
    body, _ = _http(d.pki_port, urllib.parse.urlsplit(ca_issuers).path)
    assert x509.load_der_x509_certificate(body) == issuing

    # reactivation: OCSP says good again and the next CRL no longer lists the certificate
    r = _change(env["admin"].Reactivate, issued["held"].certificate)
    assert r.change_state == pb.REQUEST_STATE_DONE and r.status == pb.CERTIFICATE_STATUS_ACTIVE
    out, _ = _ocsp(env, "held-again", files["held"])
    assert f"{files['held']}: good" in out, out
    crl = _wait_for_crl(d.pki_port, crl_path,
                        lambda c: c.get_revoked_certificate_by_serial_number(serials["held"]) is None)
    assert crl.get_revoked_certificate_by_serial_number(serials["revoked"]) is not None
    (env["work"] / "after.crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    assert _verify(env, files["held"], env["work"] / "after.crl.pem").returncode == 0


def test_daemon_refreshes_the_crl_on_its_timer(pki_daemon, tmp_path):
    """With no status change at all, the running daemon republishes on its refresh timer."""
    root = tmp_path / "cns"
    shutil.copytree(pki_daemon["dep"].root, root, ignore=shutil.ignore_patterns("work", "crl", "data", "ca.db*"))
    cfg = root / "personalizer.toml"
    cfg.write_text(cfg.read_text().split("\n[pki]")[0])
    d = _start(root, 1)
    try:
        path = "/crl/cns-issuing-ca.crl"
        first = x509.load_der_x509_crl(_http(d.pki_port, path)[0])
        later = _wait_for_crl(d.pki_port, path, lambda c: _number(c) > _number(first) + 1)
        assert later.last_update_utc > first.last_update_utc
        on_disk = x509.load_der_x509_crl((root / "crl" / "cns-issuing-ca.crl").read_bytes())
        assert _number(on_disk) >= _number(later)
        assert later.next_update_utc - later.last_update_utc <= dt.timedelta(seconds=1) + dt.timedelta(minutes=15)
    finally:
        assert d.stop() == 0
