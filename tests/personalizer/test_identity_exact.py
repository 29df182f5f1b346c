"""Identity is exact (issue 10, item 5).

- an identity URI is matched exactly: no trailing newline, no case games, exactly one ``urn:cns:`` URI;
- the TLS CA's path length is enforced: a leaf under a sub-CA the TLS CA signed is refused (gRPC's TLS
  layer accepts it; ``openssl verify`` does not);
- station certificates can be revoked into the client CRL, which the daemon rereads when it changes;
- only the chamber that holds a certificate may renew it (proof of possession is necessary, not sufficient).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import time
import uuid

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509.oid import NameOID

from personalizer.edge import identity
from personalizer.errors import Unauthenticated
from personalizer.outbox.windows import ServiceCalendar
from proto.cns.v1 import common_pb2, personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc
from tests.broker.conftest import Env, FakeClock
from tests.personalizer import helpers
from tests.personalizer.test_rules_audit import Server

T = 10


def _cert_with_uris(*uris: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
                           critical=False).sign(key, hashes.SHA256()))


@pytest.mark.parametrize("uris", [
    ("urn:cns:station:RM:RM-STATION-01\n",),                          # trailing newline
    ("urn:cns:admin:central-it\n",),
    ("urn:cns:station:RM:RM-STATION-01", "URN:CNS:admin:central-it"),  # a second identity in another case
    ("urn:cns:station:RM:A", "urn:cns:station:RM:B"),
    ("URN:CNS:admin:central-it",),
    ("urn:cns:Admin:central-it",),
    ("urn:cns:station:rm:RM-STATION-01",),
    ("urn:cns:station:RM:RM-STATION-01 ",),
])
def test_identity_uri_must_match_exactly(uris):
    with pytest.raises(Unauthenticated):
        identity.identity_from_certificate(_cert_with_uris(*uris))


def test_exact_identity_uris_are_accepted():
    ident = identity.identity_from_certificate(_cert_with_uris("urn:cns:station:RM:RM-STATION-01",
                                                               "https://example.org/other"))
    assert (ident.role, ident.chamber_code, ident.subject_id) == ("station", "RM", "RM-STATION-01")
    assert identity.identity_from_certificate(_cert_with_uris("urn:cns:admin:central-it")).role == "admin"


def _ca_status(port, tls_dir, cc):
    with helpers.channel(port, tls_dir, cc) as ch:
        return pb_grpc.PersonalizerStub(ch).GetCAStatus(pb.GetCAStatusRequest(), timeout=T)


def test_leaf_under_a_sub_ca_is_refused(daemon, tls_dir):
    """The TLS CA has pathLen 0: an admin certificate minted by a sub-CA it signed is not an admin."""
    rogue = helpers.sub_ca_client_cert(tls_dir, identity="urn:cns:admin:rogue")
    leaf_and_sub = x509.load_pem_x509_certificates(rogue.cert)
    chain = tls_dir.parent / "rogue-chain.pem"
    chain.write_bytes(rogue.cert)
    out = subprocess.run(["openssl", "verify", "-CAfile", str(tls_dir / "tls-ca.pem"), "-untrusted", str(chain),
                          str(chain)], capture_output=True, text=True)
    assert out.returncode != 0 and "path length" in out.stdout + out.stderr
    assert len(leaf_and_sub) == 2
    with pytest.raises(grpc.RpcError) as ei:
        _ca_status(daemon.port, tls_dir, rogue)
    assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED, ei.value.details()
    assert "path length" in ei.value.details()


def test_revoked_station_certificate_is_refused(daemon, deployment, tls_dir):
    """cns-personalizer revoke-client lists the certificate in the client CRL; the running daemon
    rereads it and refuses that certificate, while the other stations go on."""
    victim = helpers.client_cert(tls_dir, common_name="RM-STATION-07", identity="urn:cns:station:RM:RM-STATION-07")
    assert _ca_status(daemon.port, tls_dir, victim).connector == "embedded"
    pem = tls_dir.parent / "stolen-station.pem"
    pem.write_bytes(victim.cert)
    out = subprocess.run([str(helpers.VENV_BIN / "cns-personalizer"), "revoke-client", "--config",
                          str(deployment.server_config), "--reason", "keyCompromise", str(pem)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    serial = x509.load_pem_x509_certificate(victim.cert).serial_number
    assert f"{serial:X}" in out.stdout and "urn:cns:station:RM:RM-STATION-07" in out.stdout
    deadline = time.monotonic() + 10
    while True:
        try:
            _ca_status(daemon.port, tls_dir, victim)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in exc.details()
            break
        assert time.monotonic() < deadline, "the daemon still accepts a revoked station certificate"
        time.sleep(0.3)
    station = helpers.ClientCert((deployment.station_config.parent / "client.pem").read_bytes(),
                                 (deployment.station_config.parent / "client.key.pem").read_bytes())
    assert _ca_status(daemon.port, tls_dir, station).connector == "embedded"
    # revoking again is said, not an error; a file that is not a certificate is a one-line error
    again = subprocess.run([str(helpers.VENV_BIN / "cns-personalizer"), "revoke-client", "--config",
                            str(deployment.server_config), str(pem)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "already revoked" in again.stdout, again.stderr
    bad = tls_dir.parent / "not-a-cert.pem"
    bad.write_text("hello\n")
    bad_run = subprocess.run([str(helpers.VENV_BIN / "cns-personalizer"), "revoke-client", "--config",
                              str(deployment.server_config), str(bad)], capture_output=True, text=True, timeout=60)
    assert bad_run.returncode == 1 and "Traceback" not in bad_run.stderr
    assert len(bad_run.stderr.strip().splitlines()) == 1 and "not-a-cert.pem" in bad_run.stderr


def test_only_the_holding_chamber_may_renew(deployment, tmp_path):
    """A station of another chamber that holds the card's key (the holder walked into another
    chamber's office) proves possession, but the certificate is RM's: PERMISSION_DENIED, nothing queued."""
    clock = FakeClock(dt.datetime.now(dt.timezone.utc))
    mi = common_pb2.Requester(station_id="MI-STATION-01", chamber_code="MI", operator_id="op-mi")

    async def go():
        async with Env(deployment, tmp_path, clock, ServiceCalendar(always_open=True)) as env, \
                Server(env, deployment, extra={"mi": "urn:cns:station:MI:MI-STATION-01"}) as srv:
            issued = await srv.stub("station").SubmitIssue(helpers.issue_request(), timeout=T)
            await env.relay.run_once()
            issued = await srv.stub("station").GetRequest(pb.GetRequestRequest(request_id=issued.request_id),
                                                          timeout=T)
            cert = x509.load_der_x509_certificate(issued.certificate_der)
            clock.set(cert.not_valid_after_utc - dt.timedelta(days=30))   # inside the renewal window
            rid = str(uuid.uuid4())
            csr = helpers.csr_der()
            proof = helpers.key_of(issued.certificate_der).sign(rid.encode() + csr, padding.PKCS1v15(), hashes.SHA256())
            req = pb.RenewRequest(request_id=rid, profile=pb.CA_PROFILE_CNS_AUTH, csr_der=csr,
                                  current_certificate_der=issued.certificate_der, proof_of_possession=proof,
                                  requester=mi)
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await srv.stub("mi").Renew(req, timeout=T)
            stored = await env.store.get_request(rid)
            # the holding chamber may renew the same certificate
            rid2 = str(uuid.uuid4())
            proof2 = helpers.key_of(issued.certificate_der).sign(rid2.encode() + csr, padding.PKCS1v15(), hashes.SHA256())
            ok = await srv.stub("station").Renew(pb.RenewRequest(
                request_id=rid2, profile=pb.CA_PROFILE_CNS_AUTH, csr_der=csr,
                current_certificate_der=issued.certificate_der, proof_of_possession=proof2,
                requester=common_pb2.Requester(station_id="RM-STATION-01", chamber_code="RM",
                                               operator_id="op-rm")), timeout=T)
            return ei.value, stored, ok

    err, stored, ok = asyncio.run(go())
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.details()
    assert "chamber RM" in err.details() and "MI" in err.details()
    assert stored is None
    assert ok.request_id and ok.state != pb.REQUEST_STATE_FAILED


def test_client_crl_reload_keeps_the_last_good_list(deployment, tmp_path):
    """A garbage CRL, or one older than the one in force (a rollback), does not unrevoke anything."""
    import shutil

    from personalizer.edge import tls_clients

    tls = deployment.root / "tls"
    crl = tmp_path / "client-crl.pem"
    shutil.copy(tls / "client-crl.pem", crl)
    ca_cert = x509.load_pem_x509_certificate((tls / "tls-ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((tls / "tls-ca.key.pem").read_bytes(), None)
    victim = x509.load_pem_x509_certificate(
        helpers.client_cert(tls, common_name="v", identity="urn:cns:station:RM:V").cert)
    now = [0.0]
    trust = tls_clients.ClientTrust((tls / "tls-ca.pem").read_bytes(), crl, clock=lambda: now[0])
    trust.check_revoked(victim)
    before = crl.read_bytes()
    assert tls_clients.revoke(crl, ca_cert, ca_key, victim.serial_number, "keyCompromise")
    now[0] += tls_clients.RELOAD_CHECK_SECONDS
    with pytest.raises(Unauthenticated, match="revoked"):
        trust.check_revoked(victim)
    for replacement in (b"garbage\n", before):      # unreadable, then the older CRL (number 1 < 2)
        crl.write_bytes(replacement)
        now[0] += tls_clients.RELOAD_CHECK_SECONDS
        with pytest.raises(Unauthenticated, match="revoked"):
            trust.check_revoked(victim)
    # an unreadable CRL is refused at start-up with the key named
    crl.write_bytes(b"garbage\n")
    from personalizer.errors import ConfigError
    with pytest.raises(ConfigError, match="server.client_crl"):
        tls_clients.ClientTrust((tls / "tls-ca.pem").read_bytes(), crl)


def test_identity_cache_is_bounded_lru():
    """Thousands of stations: the cache keeps the recently used ones instead of emptying itself."""
    class Ctx:
        def __init__(self, pem):
            self.pem = pem

        def auth_context(self):
            return {identity.AUTH_PEM_KEY: [self.pem]}

    pems = [_cert_with_uris(f"urn:cns:station:RM:S-{i}").public_bytes(serialization.Encoding.PEM) for i in range(4)]
    interceptor = identity.AuthInterceptor(cache_size=3)
    for pem in pems[:3]:
        interceptor._identity(Ctx(pem))
    interceptor._identity(Ctx(pems[0]))          # recently used
    interceptor._identity(Ctx(pems[3]))          # evicts S-1, the least recently used
    key = lambda pem: identity._cache_key(pem, b"")   # noqa: E731
    assert len(interceptor._cache) == 3 and key(pems[0]) in interceptor._cache and key(pems[1]) not in interceptor._cache
