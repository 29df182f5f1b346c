"""Acceptance (issue 9 item 5, issue 10 item 2): clients that give up never strand a request.

A real ``cns-personalizer serve`` over mTLS. Callers send SubmitIssue and Suspend with deadlines of
2-12 ms, or cancel the call a few ms after sending it: the daemon may have committed the request
(already claimed for the relay) when the call is torn down. Afterwards every request the daemon
stored must reach a terminal state without a restart, a same-id retry returns that result, the CA
recorded at most one certificate per request id, and every stored suspension took effect.
"""
from __future__ import annotations

import random
import shutil
import sqlite3
import time
import uuid

import grpc
import pytest

from proto.cns.v1 import personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc
from tests.personalizer import helpers

TIMEOUT = 20
SETTLE_SECONDS = 10.0     # far below the reclaim bound: only a request handed to the relay gets there
TERMINAL = (pb.REQUEST_STATE_ISSUED, pb.REQUEST_STATE_DONE, pb.REQUEST_STATE_FAILED, pb.REQUEST_STATE_CANCELLED)


@pytest.fixture(scope="module")
def storm_daemon(deployment, tmp_path_factory):
    root = tmp_path_factory.mktemp("disconnects") / "cns"
    shutil.copytree(deployment.root, root, ignore=shutil.ignore_patterns("data*", "ca.db*", "*.toml.*"))
    cfg = root / "personalizer.toml"
    cfg.write_text(cfg.read_text().replace("answer_wait_seconds = 2.0", "answer_wait_seconds = 0.5"))
    d = helpers.DaemonProcess(cfg)
    d.root = root
    tls = root / "tls"
    chans = {who: helpers.channel(d.port, tls, helpers.ClientCert((p / "client.pem").read_bytes(),
                                                                  (p / "client.key.pem").read_bytes()))
             for who, p in (("admin", root / "admin"), ("station", root / "stations" / "RM-STATION-01"))}
    d.station = pb_grpc.PersonalizerStub(chans["station"])
    d.admin = pb_grpc.PersonalizerStub(chans["admin"])
    yield d
    for ch in chans.values():
        ch.close()
    assert d.stop() == 0


def _torn_down(call, request, rng):
    """Send ``request`` and give up: a 2-12 ms deadline, or a cancel 0-10 ms after sending."""
    if rng.random() < 0.5:
        fut = call.future(request, timeout=rng.uniform(0.002, 0.012))
    else:
        fut = call.future(request, timeout=TIMEOUT)
        time.sleep(rng.uniform(0.0, 0.010))
        fut.cancel()
    try:
        return fut.result()
    except grpc.FutureCancelledError:
        return None
    except grpc.RpcError as exc:
        assert exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED), exc
        return None


def _settled(stub, request_ids):
    """request id → final IssueResponse for every id the daemon stored (NOT_FOUND: never stored)."""
    out, deadline = {}, time.monotonic() + SETTLE_SECONDS
    for rid in request_ids:
        while True:
            try:
                r = stub.GetRequest(pb.GetRequestRequest(request_id=rid), timeout=TIMEOUT)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
                break
            if r.state in TERMINAL or time.monotonic() > deadline:
                out[rid] = r
                break
            time.sleep(0.05)
    return out


def test_disconnect_storm_leaves_no_request_pending(storm_daemon):
    d, rng = storm_daemon, random.Random(20261201)
    issues = [helpers.issue_request() for _ in range(120)]
    for req in issues:
        _torn_down(d.station.SubmitIssue, req, rng)
    # certificates to suspend, issued normally, then suspended by callers who give up
    targets = [d.station.SubmitIssue(helpers.issue_request(), timeout=TIMEOUT) for _ in range(40)]
    suspends = [pb.ChangeStatusRequest(request_id=str(uuid.uuid4()), certificate=t.certificate) for t in targets]
    for req in suspends:
        _torn_down(d.admin.Suspend, req, rng)

    stored = _settled(d.admin, [r.request_id for r in issues + suspends])
    assert len(stored) > 20, f"only {len(stored)} requests were stored: the storm did not reach the commit"
    stuck = {rid: pb.RequestState.Name(r.state) for rid, r in stored.items() if r.state not in TERMINAL}
    assert stuck == {}, f"{len(stuck)} of {len(stored)} stored requests left non-terminal: {list(stuck.items())[:5]}"
    assert {pb.RequestState.Name(r.state) for r in stored.values()} <= {"REQUEST_STATE_ISSUED", "REQUEST_STATE_DONE"}

    # a same-id retry returns the stored result (the same certificate)
    for req in issues:
        if req.request_id in stored:
            again = d.station.SubmitIssue(req, timeout=TIMEOUT)
            assert again.state == pb.REQUEST_STATE_ISSUED
            assert again.certificate.serial_hex == stored[req.request_id].certificate.serial_hex
    # every stored suspension took effect at the CA
    for req, t in zip(suspends, targets):
        if req.request_id in stored:
            st = d.admin.GetCertificateStatus(pb.GetCertificateStatusRequest(certificate=t.certificate),
                                              timeout=TIMEOUT)
            assert st.status == pb.CERTIFICATE_STATUS_SUSPENDED, req.request_id
    # none twice at the CA (its own index)
    db = sqlite3.connect(d.root / "ca" / "ca.db")
    try:
        twice = db.execute("SELECT request_id, COUNT(*) FROM certificates GROUP BY request_id "
                           "HAVING COUNT(*) > 1").fetchall()
    finally:
        db.close()
    assert twice == []


def test_the_daemon_answers_normally_after_the_storm(storm_daemon):
    r = storm_daemon.station.SubmitIssue(helpers.issue_request(), timeout=TIMEOUT)
    assert r.state == pb.REQUEST_STATE_ISSUED
