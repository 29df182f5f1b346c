"""Acceptance: the daemon as a subprocess, real mTLS on loopback, issuing through gRPC."""
from __future__ import annotations

import subprocess
import uuid

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from personalizer import dati_personali
from proto.cns.v1 import common_pb2, personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc
from tests.personalizer import helpers

TIMEOUT = 20


def _code(excinfo) -> grpc.StatusCode:
    return excinfo.value.code()


def test_issue_cns_auth_certificate(station_stub):
    req = helpers.issue_request()
    resp = station_stub.SubmitIssue(req, timeout=TIMEOUT)
    assert resp.state == pb.REQUEST_STATE_ISSUED
    cert = x509.load_der_x509_certificate(resp.certificate_der)
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert cn == f"{helpers.CF}/{helpers.CARD_ID}.{dati_personali.cn_hash(req.ef_dati_personali)}"
    assert len(resp.chain_der) == 2
    issuer = x509.load_der_x509_certificate(resp.chain_der[0])
    cert.verify_directly_issued_by(issuer)
    assert resp.certificate.serial_hex == f"{cert.serial_number:X}"


def test_issue_qualified_certificate(station_stub):
    resp = station_stub.SubmitIssue(helpers.issue_request(profile=pb.CA_PROFILE_QUALIFIED_SIGNATURE), timeout=TIMEOUT)
    cert = x509.load_der_x509_certificate(resp.certificate_der)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.content_commitment and not ku.value.digital_signature
    assert cert.subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)[0].value == "TINIT-" + helpers.CF


def test_same_id_same_payload_returns_stored_result(station_stub, admin_stub):
    req = helpers.issue_request()
    first = station_stub.SubmitIssue(req, timeout=TIMEOUT)
    second = station_stub.SubmitIssue(req, timeout=TIMEOUT)
    assert second.certificate_der == first.certificate_der
    assert second.certificate.serial_hex == first.certificate.serial_hex
    before = admin_stub.GetCAStatus(pb.GetCAStatusRequest(), timeout=TIMEOUT).issued_last_10_min
    station_stub.SubmitIssue(req, timeout=TIMEOUT)
    assert admin_stub.GetCAStatus(pb.GetCAStatusRequest(), timeout=TIMEOUT).issued_last_10_min == before


def test_concurrent_duplicates_issue_once(daemon, tls_dir, station_cert):
    req = helpers.issue_request()
    with helpers.channel(daemon.port, tls_dir, station_cert) as ch:
        stub = pb_grpc.PersonalizerStub(ch)
        futures = [stub.SubmitIssue.future(req, timeout=TIMEOUT) for _ in range(8)]
        serials = set()
        for f in futures:
            try:
                serials.add(f.result().certificate.serial_hex)
            except grpc.RpcError as exc:   # a duplicate racing the first may be told to retry
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
        assert len(serials) == 1
        assert stub.SubmitIssue(req, timeout=TIMEOUT).certificate.serial_hex in serials


def test_same_id_different_payload_is_already_exists(station_stub):
    req = helpers.issue_request()
    station_stub.SubmitIssue(req, timeout=TIMEOUT)
    other = helpers.issue_request(request_id=req.request_id, csr=helpers.csr_der(helpers.rsa_key(3072)))
    with pytest.raises(grpc.RpcError) as ei:
        station_stub.SubmitIssue(other, timeout=TIMEOUT)
    assert _code(ei) == grpc.StatusCode.ALREADY_EXISTS


def _bad_signature_csr() -> bytes:
    der = bytearray(helpers.csr_der())
    der[-1] ^= 0x01   # the signature is the last field
    return bytes(der)


INVALID_CASES = {
    "csr-signature-invalid": (dict(csr=_bad_signature_csr()), "CSR signature invalid"),
    "csr-not-der": (dict(csr=b"\x30\x03junk"), "not a DER-encoded PKCS#10"),
    "key-too-small": (dict(csr=None, key_bits=1024), "RSA key of 1024 bits is below the 2048-bit minimum"),
    "csr-ec-key": (dict(csr=None, ec=True), "only RSA keys are accepted"),
    "unknown-profile": (dict(profile=42), "unknown CA profile 42"),
    "unspecified-profile": (dict(profile=pb.CA_PROFILE_UNSPECIFIED), "unknown CA profile 0"),
    "cf-check-character": (dict(cf="RSSMRA80A01H501X"), "wrong check character 'X', expected 'U'"),
    "cf-malformed": (dict(cf="RSSMRA80A01H501"), "must be 16 characters"),
    "holder-given-name-mismatch": (dict(given_override="Maria"), "CSR subject givenName 'Mario' does not match 'Maria'"),  # same CF letters MRA
    "holder-cf-mismatch": (dict(csr_cf="VRDGPP80A01H501K"), "does not match codice fiscale RSSMRA80A01H501U"),
    "birth-date-mismatch": (dict(birth="1981-01-01"), "does not match the birth date encoded in the codice fiscale"),
    "missing-ef-dati-personali": (dict(ef=b""), "ef_dati_personali: is required for profile cns-auth"),
    "bad-request-id": (dict(request_id="bad id with spaces"), "request_id: must be 1..128"),
}


@pytest.mark.parametrize("case", sorted(INVALID_CASES))
def test_invalid_argument(station_stub, case):
    opts, expected = INVALID_CASES[case]
    kw: dict = {}
    if "csr" in opts and opts["csr"] is not None:
        kw["csr"] = opts["csr"]
    if opts.get("key_bits"):
        kw["csr"] = helpers.csr_der(helpers.rsa_key(opts["key_bits"]))
    if opts.get("ec"):
        kw["csr"] = helpers.csr_der(ec.generate_private_key(ec.SECP256R1()))
    if "csr_cf" in opts:
        kw["csr"] = helpers.csr_der(cf=opts["csr_cf"])
    for k in ("profile", "cf", "birth", "ef", "request_id"):
        if k in opts:
            kw[k] = opts[k]
    if "given_override" in opts:
        kw["given"] = opts["given_override"]
        kw["ef"] = helpers.ef_dati(given=opts["given_override"])
    if "cf" in opts:
        kw["ef"] = helpers.ef_dati(cf=opts["cf"])
    req = helpers.issue_request(**kw)
    with pytest.raises(grpc.RpcError) as ei:
        station_stub.SubmitIssue(req, timeout=TIMEOUT)
    assert _code(ei) == grpc.StatusCode.INVALID_ARGUMENT, ei.value.details()
    assert expected in ei.value.details()


def test_omocodia_codice_fiscale_accepted(station_stub):
    cf = "RSSMRA80A01H5LMX"   # digits 0,1 of the municipality replaced (omocodia), check char recomputed
    req = helpers.issue_request(cf=cf, csr=helpers.csr_der(cf=cf), ef=helpers.ef_dati(cf=cf))
    assert station_stub.SubmitIssue(req, timeout=TIMEOUT).state == pb.REQUEST_STATE_ISSUED


# -- identities and roles ------------------------------------------------------

def _call(port, tls_dir, cc, req):
    with helpers.channel(port, tls_dir, cc) as ch:
        return pb_grpc.PersonalizerStub(ch).SubmitIssue(req, timeout=TIMEOUT)


def test_station_of_another_chamber_is_refused(daemon, tls_dir):
    mi = helpers.client_cert(tls_dir, common_name="MI-1", identity="urn:cns:station:MI:MI-1")
    for req in (helpers.issue_request(chamber="RM", station="MI-1"), helpers.issue_request(chamber="MI", station="RM-STATION-01")):
        with pytest.raises(grpc.RpcError) as ei:
            _call(daemon.port, tls_dir, mi, req)
        assert _code(ei) == grpc.StatusCode.PERMISSION_DENIED


def test_station_cannot_act_for_another_chamber(station_stub):
    with pytest.raises(grpc.RpcError) as ei:
        station_stub.SubmitIssue(helpers.issue_request(chamber="MI"), timeout=TIMEOUT)
    assert _code(ei) == grpc.StatusCode.PERMISSION_DENIED
    assert "may not act for chamber MI" in ei.value.details()


def test_other_chamber_cannot_read_request(daemon, tls_dir, station_stub):
    resp = station_stub.SubmitIssue(helpers.issue_request(), timeout=TIMEOUT)
    mi = helpers.client_cert(tls_dir, common_name="MI-1", identity="urn:cns:station:MI:MI-1")
    with helpers.channel(daemon.port, tls_dir, mi) as ch:
        with pytest.raises(grpc.RpcError) as ei:
            pb_grpc.PersonalizerStub(ch).GetRequest(pb.GetRequestRequest(request_id=resp.request_id), timeout=TIMEOUT)
    assert _code(ei) == grpc.StatusCode.PERMISSION_DENIED


def test_admin_may_not_issue(admin_stub):
    with pytest.raises(grpc.RpcError) as ei:
        admin_stub.SubmitIssue(helpers.issue_request(), timeout=TIMEOUT)
    assert _code(ei) == grpc.StatusCode.PERMISSION_DENIED


def test_no_client_certificate_is_refused(daemon, tls_dir):
    # require_client_auth=True: the TLS handshake itself fails, so no RPC ever reaches a handler.
    with pytest.raises(grpc.RpcError) as ei:
        _call(daemon.port, tls_dir, None, helpers.issue_request())
    assert _code(ei) == grpc.StatusCode.UNAVAILABLE


def test_foreign_ca_client_certificate_is_refused(daemon, tls_dir):
    foreign = helpers.client_cert(tls_dir, common_name="RM-STATION-01",
                                  identity="urn:cns:station:RM:RM-STATION-01", foreign=True)
    with pytest.raises(grpc.RpcError) as ei:
        _call(daemon.port, tls_dir, foreign, helpers.issue_request())
    assert _code(ei) == grpc.StatusCode.UNAVAILABLE


def test_certificate_without_identity_is_unauthenticated(daemon, tls_dir):
    anon = helpers.client_cert(tls_dir, common_name="someone", identity=None)
    with pytest.raises(grpc.RpcError) as ei:
        _call(daemon.port, tls_dir, anon, helpers.issue_request())
    assert _code(ei) == grpc.StatusCode.UNAUTHENTICATED


# -- reads, streams, status -------------------------------------------------------

def test_get_request_watch_and_certificate_status(station_stub, admin_stub):
    resp = station_stub.SubmitIssue(helpers.issue_request(), timeout=TIMEOUT)
    got = admin_stub.GetRequest(pb.GetRequestRequest(request_id=resp.request_id), timeout=TIMEOUT)
    assert got.certificate_der == resp.certificate_der and got.state == pb.REQUEST_STATE_ISSUED
    updates = list(station_stub.WatchRequest(pb.GetRequestRequest(request_id=resp.request_id), timeout=TIMEOUT))
    assert [u.state for u in updates] == [pb.REQUEST_STATE_ISSUED]
    by_id = station_stub.GetCertificateStatus(pb.GetCertificateStatusRequest(request_id=resp.request_id), timeout=TIMEOUT)
    assert by_id.status == pb.CERTIFICATE_STATUS_ACTIVE
    by_ref = admin_stub.GetCertificateStatus(pb.GetCertificateStatusRequest(certificate=resp.certificate), timeout=TIMEOUT)
    assert by_ref.request_id == resp.request_id and by_ref.status == pb.CERTIFICATE_STATUS_ACTIVE
    with pytest.raises(grpc.RpcError) as ei:
        admin_stub.GetRequest(pb.GetRequestRequest(request_id=str(uuid.uuid4())), timeout=TIMEOUT)
    assert _code(ei) == grpc.StatusCode.NOT_FOUND


def test_ca_status_and_lifecycle_argument_checks(admin_stub):
    st = admin_stub.GetCAStatus(pb.GetCAStatusRequest(), timeout=TIMEOUT)
    assert st.operational and st.connector == "embedded" and len(st.chain_der) == 2
    assert not st.in_maintenance and st.breaker_state == "closed"
    assert {d.lane for d in st.queue_depth} == {"priority", "standard"}
    # Revoke is implemented now (it was UNIMPLEMENTED before the lifecycle issue): an empty reference is refused
    with pytest.raises(grpc.RpcError) as ei:
        admin_stub.Revoke(pb.ChangeStatusRequest(request_id="r", certificate=common_pb2.CertificateRef()), timeout=TIMEOUT)
    assert _code(ei) == grpc.StatusCode.INVALID_ARGUMENT


def test_health_and_reflection(daemon, tls_dir, station_cert):
    with helpers.channel(daemon.port, tls_dir, station_cert) as ch:
        h = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="cns.v1.Personalizer"),
                                                 timeout=TIMEOUT)
        assert h.status == health_pb2.HealthCheckResponse.SERVING
        stream = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT)
        names = {s.name for r in stream for s in r.list_services_response.service}
    assert {"cns.v1.Personalizer", "grpc.health.v1.Health"} <= names


def test_cnsctl(daemon, deployment, station_stub):
    resp = station_stub.SubmitIssue(helpers.issue_request(), timeout=TIMEOUT)
    cfg = deployment.admin_config.read_text().replace(":0\"", f":{daemon.port}\"")
    admin_cfg = deployment.admin_config.with_name("admin-live.toml")
    admin_cfg.write_text(cfg)
    out = subprocess.run([str(helpers.VENV_BIN / "cnsctl"), "--config", str(admin_cfg), "--json", "request", "show",
                          resp.request_id], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert '"state": "REQUEST_STATE_ISSUED"' in out.stdout
    out = subprocess.run([str(helpers.VENV_BIN / "cnsctl"), "--config", str(admin_cfg), "ca-status"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "operational" in out.stdout, out.stderr
