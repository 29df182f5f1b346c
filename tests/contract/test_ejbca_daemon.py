"""Acceptance: ``cns-personalizer serve`` configured with ``[ca] connector = "ejbca"`` issues through
the EJBCA contract server — a MOCK of EJBCA's published REST API (tests/contract/ejbca_contract_server.py),
not EJBCA — over mTLS on both legs (station → daemon gRPC, daemon → mock EJBCA HTTPS).

Checks: the request id is the EJBCA username; a lost enrolment answer followed by the broker's retry
leaves exactly one certificate at the CA; status changes reach EJBCA as revoke reasons; an invalid
transition is FAILED_PRECONDITION; GetCAStatus follows EJBCA's health check.
"""
from __future__ import annotations

import time
import uuid

import grpc
import pytest
from cryptography import x509

from personalizer import config, deploy
from proto.cns.v1 import personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc
from tests.ca import support
from tests.contract.ejbca_contract_server import EjbcaContractServer, MockState
from tests.contract.test_ejbca_connector import CA_NAME, CERT_PROFILES, EE_PROFILES, _tls
from tests.personalizer import helpers

TIMEOUT = 20
ENROL_TIMEOUT_SECONDS = 1.0     # the daemon's per-call timeout towards EJBCA in this test


def _ejbca_toml(url: str, d) -> str:
    cert_profiles = "\n".join(f'{k} = "{v}"' for k, v in CERT_PROFILES.items())
    ee_profiles = "\n".join(f'{k} = "{v}"' for k, v in EE_PROFILES.items())
    return f"""[ca]
connector = "ejbca"

[ca.ejbca]
base_url = "{url}"
client_cert = "{d / 'client.pem'}"
client_key = "{d / 'client.key.pem'}"
trust_anchors = "{d / 'tls-ca.pem'}"
ca_name = "{CA_NAME}"
chain = "{d / 'chain.pem'}"
timeout_seconds = {ENROL_TIMEOUT_SECONDS}

[ca.ejbca.certificate_profiles]
{cert_profiles}

[ca.ejbca.end_entity_profiles]
{ee_profiles}

"""


@pytest.fixture(scope="module")
def ejbca(tmp_path_factory):
    d = tmp_path_factory.mktemp("ejbca-daemon")
    _tls(d)
    ca = support.make_ca(None, template=support.ca_dir(d))
    (d / "chain.pem").write_bytes(support.pem(ca.issuing_certificate) + support.pem(ca.root_certificate))
    state = MockState(ca_name=CA_NAME, certificate_profiles={v: k for k, v in CERT_PROFILES.items()},
                      end_entity_profiles=set(EE_PROFILES.values()))
    server = EjbcaContractServer(ca, server_cert=str(d / "server.pem"), server_key=str(d / "server.key.pem"),
                                 client_trust=str(d / "tls-ca.pem"), state=state).start()
    root = d / "cns"
    deploy.init_deployment(root, listen="127.0.0.1:0", ca_key_bits=2048)
    cfg = root / "personalizer.toml"
    text = cfg.read_text()
    start, end = text.index("[ca]\n"), text.index("[profiles.cns-auth]")
    cfg.write_text(text[:start] + _ejbca_toml(server.url, d) + text[end:]
                   .replace("answer_wait_seconds = 2.0", "answer_wait_seconds = 2.0\nretry_initial_seconds = 0.2\n"
                            "retry_max_seconds = 1.0"))
    loaded = config.load(cfg)
    assert loaded.ca.connector == "ejbca" and loaded.ca.ejbca.ca_name == CA_NAME
    daemon = helpers.DaemonProcess(cfg)
    tls = root / "tls"
    station = helpers.channel(daemon.port, tls, helpers.ClientCert(
        (root / "stations/RM-STATION-01/client.pem").read_bytes(),
        (root / "stations/RM-STATION-01/client.key.pem").read_bytes()))
    admin = helpers.channel(daemon.port, tls, helpers.ClientCert((root / "admin/client.pem").read_bytes(),
                                                                 (root / "admin/client.key.pem").read_bytes()))
    yield dict(state=state, ca=ca, station=pb_grpc.PersonalizerStub(station), admin=pb_grpc.PersonalizerStub(admin))
    station.close()
    admin.close()
    assert daemon.stop() == 0
    server.stop()


def _usernames(state, username: str) -> int:
    return sum(1 for c in state.certs.values() if c.username == username)


def test_daemon_issues_through_ejbca_with_request_id_as_username(ejbca):
    state = ejbca["state"]
    st = ejbca["admin"].GetCAStatus(pb.GetCAStatusRequest(), timeout=TIMEOUT)
    assert st.connector == "ejbca" and st.operational and st.detail.startswith("ALLOK")
    assert list(st.chain_der) == list(ejbca["ca"].chain_der())
    req = helpers.issue_request()
    before = len(state.requests)
    r = ejbca["station"].SubmitIssue(req, timeout=TIMEOUT)
    assert r.state == pb.REQUEST_STATE_ISSUED, r
    cert = x509.load_der_x509_certificate(r.certificate_der)
    cert.verify_directly_issued_by(ejbca["ca"].issuing_certificate)
    mock = state.certs[r.certificate.serial_hex]
    assert mock.username == req.request_id and mock.der == r.certificate_der
    assert [p.rsplit("/", 1)[-1] for _, p in state.requests[before:]] == ["search", "pkcs10enroll"]
    # the same request again: the stored answer, no second enrolment
    again = ejbca["station"].SubmitIssue(req, timeout=TIMEOUT)
    assert again.certificate_der == r.certificate_der
    assert state.enrolments[req.request_id] == 1 and _usernames(state, req.request_id) == 1


def test_lost_answer_then_retry_leaves_one_certificate(ejbca):
    """EJBCA issues but the answer never arrives in time, and the connector's own search fails too
    (503): the broker retries later, searches first, finds the certificate and does not enrol again."""
    state = ejbca["state"]
    state.delay_next_enroll = ENROL_TIMEOUT_SECONDS * 3
    state.fail_after_next_enroll = [503]
    req = helpers.issue_request()
    before = len(state.requests)
    first = ejbca["station"].SubmitIssue(req, timeout=TIMEOUT)
    final = None
    for update in ejbca["station"].WatchRequest(pb.GetRequestRequest(request_id=req.request_id), timeout=TIMEOUT):
        final = update
    assert first.state != pb.REQUEST_STATE_ISSUED or first.attempts > 1
    assert final.state == pb.REQUEST_STATE_ISSUED and final.attempts >= 2, final
    calls = [p.rsplit("/", 1)[-1] for _, p in state.requests[before:]]
    assert calls.count("pkcs10enroll") == 1, calls
    assert calls[:3] == ["search", "pkcs10enroll", "search"] and calls[-1] == "search", calls
    assert state.enrolments[req.request_id] == 1 and _usernames(state, req.request_id) == 1
    assert state.certs[final.certificate.serial_hex].der == final.certificate_der


def test_status_changes_reach_ejbca(ejbca):
    state, admin = ejbca["state"], ejbca["admin"]
    r = ejbca["station"].SubmitIssue(helpers.issue_request(), timeout=TIMEOUT)
    ref = r.certificate

    def change(call, reason=""):
        return call(pb.ChangeStatusRequest(request_id=str(uuid.uuid4()), certificate=ref, reason=reason),
                    timeout=TIMEOUT)

    s = change(admin.Suspend)
    assert s.change_state == pb.REQUEST_STATE_DONE and s.status == pb.CERTIFICATE_STATUS_SUSPENDED
    assert state.certs[ref.serial_hex].reason == "CERTIFICATE_HOLD"
    s = change(admin.Reactivate)
    assert s.status == pb.CERTIFICATE_STATUS_ACTIVE and state.certs[ref.serial_hex].reason is None
    s = change(admin.Revoke, "keyCompromise")
    assert s.status == pb.CERTIFICATE_STATUS_REVOKED and state.certs[ref.serial_hex].reason == "KEY_COMPROMISE"
    with pytest.raises(grpc.RpcError) as ei:
        change(admin.Reactivate)
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    got = admin.GetCertificateStatus(pb.GetCertificateStatusRequest(certificate=ref), timeout=TIMEOUT)
    assert got.status == pb.CERTIFICATE_STATUS_REVOKED and got.revocation_reason == "keyCompromise"


def test_ca_status_follows_ejbca_health(ejbca):
    state, admin = ejbca["state"], ejbca["admin"]
    state.maintenance = True
    try:
        st = admin.GetCAStatus(pb.GetCAStatusRequest(), timeout=TIMEOUT)
        assert not st.operational and "off-line" in st.detail and st.connector == "ejbca"
    finally:
        state.maintenance = False
    deadline = time.monotonic() + 10
    while not admin.GetCAStatus(pb.GetCAStatusRequest(), timeout=TIMEOUT).operational:
        assert time.monotonic() < deadline
        time.sleep(0.1)
