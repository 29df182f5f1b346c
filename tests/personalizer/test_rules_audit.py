"""Rules and records over real gRPC + mutual TLS (issue 4, item 5).

The daemon's services, interceptor, broker, relay, store and embedded CA run in
this process behind a real TLS port, with the broker's clock injected so that
"expired" and "outside the renewal window" can be reached. Each invalid
transition must come back FAILED_PRECONDITION with its reason, and every call —
accepted, done, refused by the rules, refused by the role check — must leave an
audit row naming who, from which station, what and the result.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from personalizer import config

from personalizer.edge import identity
from personalizer.edge.admin_service import QueueAdminService
from personalizer.outbox.relay import RELAY_ACTOR
from personalizer.edge.service import PersonalizerService
from personalizer.edge.tls_clients import ClientTrust
from personalizer.outbox.windows import ServiceCalendar
from proto.cns.v1 import admin_pb2 as apb, admin_pb2_grpc as apb_grpc, common_pb2
from proto.cns.v1 import personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc
from tests.broker.conftest import Env, FakeClock, issue_input
from tests.personalizer import helpers

STATION_URI = "urn:cns:station:RM:RM-STATION-01"
REQUESTER = common_pb2.Requester(station_id="RM-STATION-01", chamber_code="RM", operator_id="op-rules")
T = 10


def _renew(cert_der: bytes) -> pb.RenewRequest:
    rid = str(uuid.uuid4())
    csr = helpers.csr_der()
    proof = helpers.key_of(cert_der).sign(rid.encode() + csr, padding.PKCS1v15(), hashes.SHA256())
    return pb.RenewRequest(request_id=rid, profile=pb.CA_PROFILE_CNS_AUTH, csr_der=csr,
                           current_certificate_der=cert_der, proof_of_possession=proof, requester=REQUESTER)


def _change(ref, reason: str = "", requester=REQUESTER) -> pb.ChangeStatusRequest:
    return pb.ChangeStatusRequest(request_id=str(uuid.uuid4()), certificate=ref, reason=reason, requester=requester)


class Server:
    """The daemon's gRPC services around an ``Env`` (broker + relay + store + CA), on a TLS port."""

    def __init__(self, env: Env, deployment, extra: dict[str, str] | None = None):
        self.env, self.deployment = env, deployment
        self.extra = extra or {}   # more client identities: name -> identity URI

    async def __aenter__(self):
        cfg = config.load(self.deployment.server_config)
        s = cfg.server
        trust = ClientTrust(s.client_trust_anchors.read_bytes(), s.client_crl)   # as the daemon does
        self.server = grpc.aio.server(interceptors=[identity.AuthInterceptor(trust=trust)])
        pb_grpc.add_PersonalizerServicer_to_server(PersonalizerService(broker=self.env.broker, relay=self.env.relay),
                                                   self.server)
        apb_grpc.add_QueueAdminServicer_to_server(QueueAdminService(broker=self.env.broker, relay=self.env.relay),
                                                  self.server)
        creds = grpc.ssl_server_credentials([(s.tls_key.read_bytes(), s.tls_cert.read_bytes())],
                                            root_certificates=s.client_trust_anchors.read_bytes(),
                                            require_client_auth=True)
        self.port = port = self.server.add_secure_port("127.0.0.1:0", creds)
        await self.server.start()
        tls = self.deployment.root / "tls"
        self.channels = {}
        for who, cc in (("station", _cert(self.deployment.station_config.parent)),
                        ("admin", _cert(self.deployment.admin_config.parent)),
                        ("other-station", helpers.client_cert(tls, common_name="RM-STATION-02",
                                                              identity="urn:cns:station:RM:RM-STATION-02")),
                        *((who, helpers.client_cert(tls, common_name=who, identity=uri))
                          for who, uri in self.extra.items())):
            creds = grpc.ssl_channel_credentials(root_certificates=(tls / "tls-ca.pem").read_bytes(),
                                                 private_key=cc.key, certificate_chain=cc.cert)
            self.channels[who] = grpc.aio.secure_channel(f"localhost:{port}", creds)
        return self

    def stub(self, who: str):
        return pb_grpc.PersonalizerStub(self.channels[who])

    def admin(self, who: str):
        return apb_grpc.QueueAdminStub(self.channels[who])

    async def __aexit__(self, *exc):
        for ch in self.channels.values():
            await ch.close()
        await self.server.stop(0)


def _cert(directory) -> helpers.ClientCert:
    return helpers.ClientCert((directory / "client.pem").read_bytes(), (directory / "client.key.pem").read_bytes())


async def _refused(call, request, code=grpc.StatusCode.FAILED_PRECONDITION) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await call(request, timeout=T)
    assert ei.value.code() == code, (ei.value.code(), ei.value.details())
    return ei.value.details()


def test_invalid_transitions_are_failed_precondition_and_everything_is_audited(deployment, tmp_path):
    clock = FakeClock(dt.datetime.now(dt.timezone.utc))

    async def go():
        async with Env(deployment, tmp_path, clock, ServiceCalendar(always_open=True)) as env, \
                Server(env, deployment) as srv:
            station, admin = srv.stub("station"), srv.stub("admin")
            issued = await station.SubmitIssue(helpers.issue_request(), timeout=T)
            await env.relay.run_once()
            issued = await station.GetRequest(pb.GetRequestRequest(request_id=issued.request_id), timeout=T)
            assert issued.state == pb.REQUEST_STATE_ISSUED
            cert = x509.load_der_x509_certificate(issued.certificate_der)
            ref = issued.certificate

            # renewal outside the window (a fresh certificate), then of an expired one
            msg = await _refused(station.Renew, _renew(issued.certificate_der))
            assert "renewal opens" in msg and "days before the current certificate expires" in msg
            clock.set(cert.not_valid_after_utc + dt.timedelta(days=1))
            msg = await _refused(station.Renew, _renew(issued.certificate_der))
            assert "expired" in msg and "only an active certificate can be renewed" in msg
            clock.set(dt.datetime.now(dt.timezone.utc))

            # the station suspends, reactivates and revokes its own chamber's certificate
            for call, reason, status in ((station.Suspend, "", pb.CERTIFICATE_STATUS_SUSPENDED),
                                         (station.Reactivate, "", pb.CERTIFICATE_STATUS_ACTIVE),
                                         (station.Revoke, "keyCompromise", pb.CERTIFICATE_STATUS_REVOKED)):
                r = await call(_change(ref, reason), timeout=T)
                await env.relay.run_once()
                st = await station.GetCertificateStatus(pb.GetCertificateStatusRequest(certificate=ref), timeout=T)
                assert st.status == status, (call, st)
            assert st.revocation_reason == "keyCompromise"
            msg = await _refused(station.Reactivate, _change(ref))
            assert "cannot reactivate a certificate that is revoked" in msg and "revocation is final" in msg
            msg = await _refused(admin.Reactivate, pb.ChangeStatusRequest(request_id=str(uuid.uuid4()),
                                                                          certificate=ref))
            assert "revocation is final" in msg
            msg = await _refused(station.Suspend, _change(ref))
            assert "cannot suspend a certificate that is revoked" in msg
            msg = await _refused(station.Renew, _renew(issued.certificate_der))
            assert "the current certificate is revoked" in msg

            # role and identity refusals (interceptor), and a refused admin call, are audited too
            msg = await _refused(srv.admin("station").ListQueue, apb.ListQueueRequest(),
                                 grpc.StatusCode.PERMISSION_DENIED)
            assert "may not call /cns.v1.QueueAdmin/ListQueue" in msg
            other = common_pb2.Requester(station_id="RM-STATION-09", chamber_code="RM", operator_id="op")
            await _refused(station.Suspend, _change(ref, requester=other), grpc.StatusCode.PERMISSION_DENIED)
            await _refused(srv.stub("other-station").Suspend,
                           _change(ref, requester=common_pb2.Requester(station_id="RM-STATION-02", chamber_code="RM",
                                                                       operator_id="op")),
                           grpc.StatusCode.FAILED_PRECONDITION)   # same chamber: allowed, but it is revoked
            await _refused(srv.admin("admin").Cancel, apb.QueueItemRequest(request_id=issued.request_id))

            rows = await env.store.list_audit()
            return rows, issued, ref

    rows, issued, ref = asyncio.run(go())
    seen = [(r.actor, r.station_id, r.operation, r.result) for r in rows]
    # who, from which station, what, result — and when
    assert all(r.at > 0 for r in rows)
    assert (STATION_URI, "RM-STATION-01", "issue", "accepted") in seen
    assert (RELAY_ACTOR, "RM-STATION-01", "issue", "done") in seen
    for op in ("suspend", "reactivate", "revoke"):
        assert (STATION_URI, "RM-STATION-01", op, "accepted") in seen, op
        assert (RELAY_ACTOR, "RM-STATION-01", op, "done") in seen, op
    refused = [r for r in rows if r.result == "refused:FAILED_PRECONDITION"]
    assert sum(r.operation == "renew" and r.actor == STATION_URI for r in refused) == 3
    assert any(r.operation == "reactivate" and r.actor == STATION_URI and "revocation is final" in r.detail
               for r in refused)
    assert any(r.operation == "reactivate" and r.actor.startswith("urn:cns:admin:") for r in refused)
    assert any(r.operation == "queue-cancel" and r.actor.startswith("urn:cns:admin:") for r in refused)
    assert any(r.operation == "suspend" and r.actor == "urn:cns:station:RM:RM-STATION-02"
               and r.station_id == "RM-STATION-02" for r in refused)
    denied = [r for r in rows if r.result == "refused:PERMISSION_DENIED"]
    assert any(r.operation == "queue-list" and r.actor == STATION_URI and r.station_id == "RM-STATION-01"
               and "may not call" in r.detail for r in denied)
    assert any(r.operation == "suspend" and r.actor == STATION_URI and r.station_id == "RM-STATION-09"
               and "may not act as station" in r.detail for r in denied)
    status_rows = [r for r in rows if r.operation == "status"]
    assert status_rows and all(r.actor == STATION_URI and r.result == "done" for r in status_rows)
    assert {r.detail for r in status_rows} >= {"suspended", "active", "revoked"}
    assert any(ref.serial_hex in (r.target or "") for r in status_rows)


def test_audit_table_refuses_changes(deployment, tmp_path):
    """Append-only: the store's triggers refuse UPDATE and DELETE on the audit table."""
    import sqlite3

    clock = FakeClock(dt.datetime.now(dt.timezone.utc))

    async def go():
        async with Env(deployment, tmp_path, clock, ServiceCalendar(always_open=True)) as env:
            await env.broker.submit_issue(issue_input())
    asyncio.run(go())
    db = sqlite3.connect(tmp_path / "requests.sqlite")
    try:
        assert db.execute("SELECT COUNT(*) FROM audit").fetchone()[0] >= 1
        for sql in ("UPDATE audit SET result = 'x'", "DELETE FROM audit"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                db.execute(sql)
    finally:
        db.close()
