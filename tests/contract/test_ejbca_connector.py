"""The EJBCA REST connector driven against the EJBCA contract server (a mock, over mTLS)."""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from personalizer.ca import profiles
from personalizer.ca.base import CertRef, CertState
from personalizer.ca.ejbca import EjbcaConnector, EjbcaSettings
from personalizer.ca.errors import InvalidTransition
from personalizer.errors import CAError, CAUnavailable, InvalidRequest, NotFound
from tests.ca import support
from tests.contract.ejbca_contract_server import EjbcaContractServer, MockState

CA_NAME = "CNS-Issuing-CA"
CERT_PROFILES = {"cns-auth": "CNS_AUTH", "qualified-signature": "CNS_QUALIFIED"}
EE_PROFILES = {"cns-auth": "CNS_HOLDER", "qualified-signature": "CNS_HOLDER"}


def _tls(d):
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = profiles.build_ca(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Test TLS CA")]),
                           ca_key.public_key(), issuer=None, now=now, path_length=0,
                           validity=dt.timedelta(days=2)).sign(ca_key, hashes.SHA256())
    (d / "tls-ca.pem").write_bytes(support.pem(ca))

    def leaf(name, cn, **kw):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = profiles.build_tls_leaf(cn, key.public_key(), issuer=ca, now=now, **kw).sign(ca_key, hashes.SHA256())
        (d / f"{name}.pem").write_bytes(support.pem(cert))
        (d / f"{name}.key.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    leaf("server", "ejbca.test", server_names=["localhost", "127.0.0.1"])
    leaf("client", "cns-personalizer-ra")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("ejbca")
    _tls(d)
    ca = support.make_ca(None, template=support.ca_dir(d))
    (d / "chain.pem").write_bytes(support.pem(ca.issuing_certificate) + support.pem(ca.root_certificate))
    state = MockState(ca_name=CA_NAME, certificate_profiles={v: k for k, v in CERT_PROFILES.items()},
                      end_entity_profiles=set(EE_PROFILES.values()))
    server = EjbcaContractServer(ca, server_cert=str(d / "server.pem"), server_key=str(d / "server.key.pem"),
                                 client_trust=str(d / "tls-ca.pem"), state=state).start()
    settings = EjbcaSettings(base_url=server.url, client_cert=d / "client.pem", client_key=d / "client.key.pem",
                             trust_anchors=d / "tls-ca.pem", ca_name=CA_NAME, chain_pem=d / "chain.pem",
                             certificate_profiles=CERT_PROFILES, end_entity_profiles=EE_PROFILES,
                             timeout_seconds=5)
    yield dict(dir=d, server=server, state=state, settings=settings, ca=ca)
    server.stop()


@pytest.fixture
def connector(env):
    env["state"].fail_next.clear()
    env["state"].maintenance = False
    return EjbcaConnector(env["settings"])


def _issue(conn, request_id, profile="cns-auth"):
    return asyncio.run(conn.issue(profile, support.csr(), support.SUBJECT, request_id))


def test_enroll_then_retry_issues_once(env, connector):
    first = _issue(connector, "ej-1")
    cert = x509.load_der_x509_certificate(first.certificate_der)
    cert.verify_directly_issued_by(env["ca"].issuing_certificate)
    assert first.chain_der == env["ca"].chain_der()
    assert env["state"].enrolments["ej-1"] == 1
    again = _issue(connector, "ej-1")
    assert again.certificate_der == first.certificate_der
    assert env["state"].enrolments["ej-1"] == 1
    found = asyncio.run(connector.find_issued("ej-1"))
    assert found.ref == first.ref
    assert asyncio.run(connector.find_issued("ej-never")) is None


def test_lost_enrolment_answer_is_found_by_search_not_issued_again(env):
    state = env["state"]
    conn = EjbcaConnector(dataclasses.replace(env["settings"], timeout_seconds=0.5))
    state.delay_next_enroll = 1.5      # EJBCA issues, the answer arrives after the client gave up
    before = len(state.requests)
    issued = _issue(conn, "ej-lost")
    calls = [p.rsplit("/", 1)[-1] for _, p in state.requests[before:]]
    assert calls == ["search", "pkcs10enroll", "search"]
    assert state.enrolments["ej-lost"] == 1
    assert state.certs[issued.ref.serial_hex].username == "ej-lost"
    # a later retry (e.g. by the broker after a restart) searches first and never enrols again
    assert _issue(conn, "ej-lost").ref == issued.ref
    assert state.enrolments["ej-lost"] == 1


def test_hold_unhold_revoke_and_status(env, connector):
    ref = _issue(connector, "ej-life").ref
    run = asyncio.run
    assert run(connector.status(ref)).state is CertState.ACTIVE
    held = run(connector.suspend(ref))
    assert held.state is CertState.SUSPENDED and held.revocation_reason == "certificateHold"
    with pytest.raises(InvalidTransition):
        run(connector.suspend(ref))
    assert run(connector.reactivate(ref)).state is CertState.ACTIVE
    with pytest.raises(InvalidTransition, match="only a suspended"):
        run(connector.reactivate(ref))
    revoked = run(connector.revoke(ref, "keyCompromise"))
    assert revoked.state is CertState.REVOKED and revoked.revocation_reason == "keyCompromise"
    assert revoked.revoked_at is not None
    with pytest.raises(InvalidTransition):
        run(connector.reactivate(ref))
    with pytest.raises(InvalidTransition):
        run(connector.revoke(ref, "superseded"))
    puts = [p for m, p in env["state"].requests if m == "PUT" and ref.serial_hex in p]
    assert len(puts) == 3   # hold, remove from CRL, key compromise; refused transitions never reached EJBCA


def test_unknown_certificate(connector, env):
    ref = CertRef(env["ca"].issuing_certificate.subject.rfc4514_string(), "ABCDEF123")
    assert asyncio.run(connector.status(ref)) is None
    with pytest.raises(NotFound):
        asyncio.run(connector.suspend(ref))


def test_health_and_ca_list(env, connector):
    h = asyncio.run(connector.health())
    assert h.operational and h.detail.startswith("ALLOK")
    env["state"].maintenance = True
    h = asyncio.run(connector.health())
    assert not h.operational and "HTTP 500" in h.detail and "off-line" in h.detail
    cas = asyncio.run(connector.list_cas())
    assert cas[0]["name"] == CA_NAME


def test_error_mapping(env, connector):
    # 4xx from enrolment → InvalidRequest carrying EJBCA's message
    bad = EjbcaConnector(dataclasses.replace(env["settings"], certificate_profiles={"cns-auth": "NO_SUCH"}))
    with pytest.raises(InvalidRequest, match="profile not found"):
        _issue(bad, "ej-bad-profile")
    # 5xx → CAUnavailable (the request stays retryable)
    env["state"].fail_next.append(503)
    with pytest.raises(CAUnavailable, match="HTTP 503"):
        _issue(connector, "ej-503")
    # an unmapped profile is refused before any call
    with pytest.raises(InvalidRequest, match="not mapped"):
        _issue(EjbcaConnector(dataclasses.replace(env["settings"], certificate_profiles={})), "ej-unmapped")
    # 403 → CAError (our credentials), not InvalidRequest
    env["state"].fail_next.append(403)
    with pytest.raises(CAError) as exc:
        _issue(connector, "ej-403")
    assert not isinstance(exc.value, InvalidRequest)


def test_transport_failures_are_unavailable(env):
    no_client_cert = EjbcaConnector(env["settings"])
    no_client_cert._ctx = __import__("ssl").create_default_context(cafile=str(env["settings"].trust_anchors))
    with pytest.raises(CAUnavailable):
        _issue(no_client_cert, "ej-no-mtls")
    closed = EjbcaConnector(dataclasses.replace(env["settings"], base_url="https://localhost:1"))
    with pytest.raises(CAUnavailable, match="unreachable"):
        _issue(closed, "ej-closed")
    h = asyncio.run(closed.health())
    assert not h.operational
