"""Acceptance: the daemon subprocess over real mTLS — lifecycle RPCs, QueueAdmin (admin only),
planned maintenance in GetCAStatus, the Prometheus endpoint, cnsctl queue and the audit command."""
from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
import uuid

import grpc
import pytest

from proto.cns.v1 import admin_pb2 as apb, admin_pb2_grpc as apb_grpc, common_pb2
from proto.cns.v1 import personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc
from tests.personalizer import helpers

TIMEOUT = 20


@pytest.fixture(scope="module")
def ops_daemon(deployment):
    cfg = deployment.server_config.with_name("ops.toml")
    cfg.write_text(deployment.server_config.read_text().replace(
        "[metrics]\nenabled = false", "[metrics]\nenabled = true").replace(
        "answer_wait_seconds = 2.0", "answer_wait_seconds = 0.5"))
    d = helpers.DaemonProcess(cfg)
    m = re.search(r"metrics on port (\d+)", d.proc.stdout.readline())
    d.metrics_port = int(m.group(1)) if m else 0
    d.config = cfg
    yield d
    assert d.stop() == 0


def _cert(deployment, who: str) -> helpers.ClientCert:
    d = (deployment.admin_config if who == "admin" else deployment.station_config).parent
    return helpers.ClientCert((d / "client.pem").read_bytes(), (d / "client.key.pem").read_bytes())


@pytest.fixture(scope="module")
def channels(ops_daemon, deployment):
    tls = deployment.root / "tls"
    chs = {who: helpers.channel(ops_daemon.port, tls, _cert(deployment, who)) for who in ("admin", "station")}
    yield chs
    for ch in chs.values():
        ch.close()


def test_queue_admin_is_admin_only(channels):
    with pytest.raises(grpc.RpcError) as ei:
        apb_grpc.QueueAdminStub(channels["station"]).ListQueue(apb.ListQueueRequest(), timeout=TIMEOUT)
    assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may not call /cns.v1.QueueAdmin/ListQueue" in ei.value.details()
    assert apb_grpc.QueueAdminStub(channels["admin"]).ListQueue(apb.ListQueueRequest(), timeout=TIMEOUT).items is not None


def test_suspend_reactivate_revoke_over_mtls(channels):
    station, admin = pb_grpc.PersonalizerStub(channels["station"]), pb_grpc.PersonalizerStub(channels["admin"])
    issued = station.SubmitIssue(helpers.issue_request(), timeout=TIMEOUT)
    assert issued.state == pb.REQUEST_STATE_ISSUED and issued.kind == "issue"
    ref = issued.certificate

    def change(call, reason=""):
        return call(pb.ChangeStatusRequest(request_id=str(uuid.uuid4()), certificate=ref, reason=reason),
                    timeout=TIMEOUT)

    with pytest.raises(grpc.RpcError) as ei:                 # a station may not suspend
        change(station.Suspend)
    assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED
    r = change(admin.Suspend)
    assert r.change_state == pb.REQUEST_STATE_DONE and r.status == pb.CERTIFICATE_STATUS_SUSPENDED
    r = change(admin.Reactivate)
    assert r.change_state == pb.REQUEST_STATE_DONE and r.status == pb.CERTIFICATE_STATUS_ACTIVE
    r = change(admin.Revoke, "keyCompromise")
    assert r.status == pb.CERTIFICATE_STATUS_REVOKED and r.revocation_reason
    with pytest.raises(grpc.RpcError) as ei:
        change(admin.Reactivate)
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # renewal of a revoked certificate: refused with a reason
    with pytest.raises(grpc.RpcError) as ei:
        station.Renew(pb.RenewRequest(request_id=str(uuid.uuid4()), profile=pb.CA_PROFILE_CNS_AUTH,
                                      csr_der=helpers.csr_der(), current_certificate_der=issued.certificate_der,
                                      proof_of_possession=b"x",
                                      requester=common_pb2.Requester(station_id="RM-STATION-01", chamber_code="RM",
                                                                     operator_id="op")), timeout=TIMEOUT)
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "revoked" in ei.value.details()


def test_maintenance_queues_the_priority_lane_and_shows_in_status(channels, ops_daemon):
    station, admin = pb_grpc.PersonalizerStub(channels["station"]), pb_grpc.PersonalizerStub(channels["admin"])
    qa = apb_grpc.QueueAdminStub(channels["admin"])
    issued = station.SubmitIssue(helpers.issue_request(), timeout=TIMEOUT)
    now = int(time.time())
    w = qa.AddMaintenance(pb.MaintenanceWindow(starts_at=now - 1, ends_at=now + 6, reason="test upgrade"),
                          timeout=TIMEOUT)
    st = admin.GetCAStatus(pb.GetCAStatusRequest(), timeout=TIMEOUT)
    assert st.in_maintenance and not st.operational and st.reactivation_at == now + 6
    assert any(p.id == w.id for p in st.planned_maintenance)
    rid = str(uuid.uuid4())
    r = admin.Suspend(pb.ChangeStatusRequest(request_id=rid, certificate=issued.certificate), timeout=TIMEOUT)
    assert r.change_state == pb.REQUEST_STATE_RECEIVED and r.status == pb.CERTIFICATE_STATUS_ACTIVE
    listed = qa.ListQueue(apb.ListQueueRequest(), timeout=TIMEOUT).items
    assert any(i.request_id == rid and i.lane == "priority" for i in listed)
    assert "maintenance" in admin.GetRequest(pb.GetRequestRequest(request_id=rid), timeout=TIMEOUT).waiting_reason
    with pytest.raises(grpc.RpcError) as ei:   # a finished request is not cancellable
        qa.Cancel(apb.QueueItemRequest(request_id=issued.request_id), timeout=TIMEOUT)
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    other = str(uuid.uuid4())                  # one that never reached the CA is
    admin.Revoke(pb.ChangeStatusRequest(request_id=other, certificate=issued.certificate, reason="superseded"),
                 timeout=TIMEOUT)
    assert qa.Cancel(apb.QueueItemRequest(request_id=other), timeout=TIMEOUT).state == pb.REQUEST_STATE_CANCELLED
    states = [u.state for u in admin.WatchRequest(pb.GetRequestRequest(request_id=rid), timeout=TIMEOUT)]
    assert states[0] == pb.REQUEST_STATE_RECEIVED and states[-1] == pb.REQUEST_STATE_DONE
    st = admin.GetCAStatus(pb.GetCAStatusRequest(), timeout=TIMEOUT)
    assert not st.in_maintenance and st.operational
    assert {t.kind for t in st.response_times} >= {"issue", "suspend"} and st.requests_last_10_min >= 2
    assert all(t.p95_ms >= t.p50_ms > 0 for t in st.response_times)
    text = urllib.request.urlopen(f"http://127.0.0.1:{ops_daemon.metrics_port}/metrics", timeout=5).read().decode()
    assert 'cns_ca_response_ms{kind="issue",quantile="0.95"}' in text and 'cns_queue_depth{lane="priority"}' in text


def test_cnsctl_queue_and_audit(channels, ops_daemon, deployment):
    station = pb_grpc.PersonalizerStub(channels["station"])
    station.SubmitIssue(helpers.issue_request(), timeout=TIMEOUT)
    cfg = deployment.admin_config.with_name("admin-ops.toml")
    cfg.write_text(deployment.admin_config.read_text().replace(':0"', f':{ops_daemon.port}"'))
    out = subprocess.run([str(helpers.VENV_BIN / "cnsctl"), "--config", str(cfg), "--json", "queue", "list"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "items" in json.loads(out.stdout)
    out = subprocess.run([str(helpers.VENV_BIN / "cnsctl"), "--config", str(cfg), "queue", "show", "no-such-id"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "NOT_FOUND" in out.stderr
    out = subprocess.run([str(helpers.VENV_BIN / "cns-personalizer"), "audit", "--json", "--config",
                          str(ops_daemon.config)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    ops = {(r["operation"], r["result"]) for r in rows}
    assert {("issue", "accepted"), ("issue", "done"), ("suspend", "done"), ("revoke", "done"), ("queue-cancel", "done"),
            ("reactivate", "refused:FAILED_PRECONDITION")} <= ops
    assert any(r["actor"] == "urn:cns:station:RM:RM-STATION-01" and r["station_id"] == "RM-STATION-01" for r in rows)
