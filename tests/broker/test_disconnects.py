"""Acceptance (issue 9 item 5, issue 10 item 2): clients that give up never strand a request.

A real ``cns-personalizer serve`` over mTLS. Callers send SubmitIssue and Suspend with deadlines of
2-12 ms, or cancel the call a few ms after sending it: the daemon may have committed the request
(already claimed for the relay) when the call is torn down. Afterwards every request the daemon
stored must reach a terminal state without a restart, a same-id retry returns that result, the CA
recorded at most one certificate per request id, and every stored suspension took effect.
"""
from __future__ import annotations

import asyncio
import random
import shutil
import sqlite3
import subprocess
import time
import uuid

import grpc
import pytest

from personalizer.rules import validation
from personalizer.outbox.payloads import IssuancePayload
from personalizer.store import AuditEntry, RequestRecord, SqliteRequestStore
from proto.cns.v1 import admin_pb2 as apb, admin_pb2_grpc as apb_grpc
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
    d.admin_channel = chans["admin"]
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


def _storm(d, *, issues: int, suspends: int, seed: int):
    rng = random.Random(seed)
    issues = [helpers.issue_request() for _ in range(issues)]
    for req in issues:
        _torn_down(d.station.SubmitIssue, req, rng)
    # certificates to suspend, issued normally, then suspended by callers who give up
    targets = [d.station.SubmitIssue(helpers.issue_request(), timeout=TIMEOUT) for _ in range(suspends)]
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
    db = sqlite3.connect(d.root / "data" / "requests.sqlite")   # the CA's tables in the store's file (issue 16)
    try:
        twice = db.execute("SELECT request_id, COUNT(*) FROM ca_certificates GROUP BY request_id "
                           "HAVING COUNT(*) > 1").fetchall()
    finally:
        db.close()
    assert twice == []
    return len(stored)


def test_disconnect_storm_leaves_no_request_pending(storm_daemon):
    _storm(storm_daemon, issues=120, suspends=40, seed=20261201)


@pytest.mark.slow
def test_disconnect_storm_soak(storm_daemon):
    """The sizes of the reports (500 cancelled SubmitIssue, 150 Suspend), with other seeds."""
    for seed in range(3):
        _storm(storm_daemon, issues=500, suspends=150, seed=seed)


def test_the_daemon_answers_normally_after_the_storm(storm_daemon):
    r = storm_daemon.station.SubmitIssue(helpers.issue_request(), timeout=TIMEOUT)
    assert r.state == pb.REQUEST_STATE_ISSUED


def _cnsctl(d, deployment, *args):
    cfg = d.root / deployment.admin_config.relative_to(deployment.root).with_name("admin-storm.toml")
    admin = d.root / deployment.admin_config.relative_to(deployment.root)
    cfg.write_text(admin.read_text().replace(':0"', f':{d.port}"'))
    return subprocess.run([str(helpers.VENV_BIN / "cnsctl"), "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=60)


def test_cnsctl_queue_retry_takes_back_a_claim_whose_holder_is_gone(storm_daemon, deployment):
    """A claim left by a process that is gone (here: written claimed into the daemon's store from outside,
    as a second daemon that died would leave it): `cnsctl queue retry` makes the daemon deliver it now."""
    d = storm_daemon
    req = helpers.issue_request()

    async def orphan():
        store = await SqliteRequestStore.open(d.root / "data" / "requests.sqlite")
        try:
            h = req.holder
            valid = validation.check_issue(   # the card id and CN hash the broker would compute
                request_id=req.request_id, profile="cns-auth", csr_der=req.csr_der,
                holder=validation.check_holder(h.codice_fiscale, h.given_name, h.surname, h.birth_date),
                card_id=req.card.card_id, ef_dati_personali=req.ef_dati_personali,
                min_rsa_bits={"cns-auth": 2048, "qualified-signature": 2048})
            payload = IssuancePayload(profile="cns-auth", csr_der=req.csr_der, codice_fiscale=h.codice_fiscale,
                                      given_name=h.given_name, surname=h.surname, birth_date=h.birth_date,
                                      card_id=valid.card_id, dati_personali_hash=valid.dati_personali_hash)
            rec = RequestRecord(request_id=req.request_id, kind="issue", profile="cns-auth",
                                payload_sha256=b"orphan", chamber_code="RM", station_id="RM-STATION-01",
                                operator_id="op-001")
            assert await store.enqueue(rec, lane="standard", payload=payload.encode(), claimer="gone-daemon",
                                       audit=AuditEntry("gone", "RM-STATION-01", "issue", rec.request_id, "",
                                                        "accepted"))
        finally:
            await store.close()
    asyncio.run(orphan())
    before = d.admin.GetRequest(pb.GetRequestRequest(request_id=req.request_id), timeout=TIMEOUT)
    assert before.state == pb.REQUEST_STATE_PENDING
    out = _cnsctl(d, deployment, "--json", "queue", "retry", req.request_id)
    assert out.returncode == 0, out.stderr
    got = _settled(d.admin, [req.request_id])[req.request_id]
    assert got.state == pb.REQUEST_STATE_ISSUED, got


def test_cnsctl_queue_cancel_leaves_a_refusal_the_agent_can_read(storm_daemon, deployment):
    d = storm_daemon
    qa = apb_grpc.QueueAdminStub(d.admin_channel)
    now = int(time.time())
    # a window that outlasts a slow cnsctl start (a 2 s one ended first on a loaded machine), ended by hand
    window = qa.AddMaintenance(pb.MaintenanceWindow(starts_at=now - 1, ends_at=now + 120, reason="test"),
                               timeout=TIMEOUT)
    queued = d.station.SubmitIssue(helpers.issue_request(), timeout=TIMEOUT)
    assert queued.state == pb.REQUEST_STATE_RECEIVED
    out = _cnsctl(d, deployment, "--json", "queue", "cancel", queued.request_id)
    assert out.returncode == 0, out.stderr
    qa.EndMaintenance(apb.MaintenanceWindowRequest(id=window.id), timeout=TIMEOUT)   # the relay runs again
    deadline = time.monotonic() + 15
    while True:
        got = d.station.GetRequest(pb.GetRequestRequest(request_id=queued.request_id), timeout=TIMEOUT)
        if got.state != pb.REQUEST_STATE_RECEIVED or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert got.state == pb.REQUEST_STATE_CANCELLED and got.error.code == "CANCELLED" and got.error.message
    assert not got.certificate_der
