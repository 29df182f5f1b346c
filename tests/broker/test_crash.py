"""Crash safety: ``cns-personalizer serve`` killed with SIGKILL at random moments during a stream of
requests, then restarted. No accepted request is lost, the CA never issues twice for one request id
(its own rows, in the store's file since issue 16, are checked), and every caller gets its result by request id
after restart.

The default run is a bounded sample (a few kills); ``-m slow`` runs the long version."""
from __future__ import annotations

import random
import shutil
import socket
import sqlite3
import threading
import time

import grpc
import pytest

from proto.cns.v1 import personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc
from tests.personalizer import helpers

CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 300),
                   ("grpc.min_reconnect_backoff_ms", 50)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _crash_round(deployment, tmp_path, *, requests: int, kills: int, senders: int = 4, seed: int = 7):
    rng = random.Random(seed)
    root = tmp_path / "crash"
    shutil.copytree(deployment.root, root)
    for junk in ("data", "ca/ca.db", "ca/ca.db-wal", "ca/ca.db-shm"):
        p = root / junk
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    port = _free_port()
    cfg = root / "personalizer.toml"
    cfg.write_text(cfg.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"')
                   .replace("answer_wait_seconds = 2.0", "answer_wait_seconds = 0.2"))
    reqs = [helpers.issue_request() for _ in range(requests)]
    answered: dict[str, int] = {}
    lock = threading.Lock()
    d = helpers.DaemonProcess(cfg)
    tls = root / "tls"
    cc = helpers.ClientCert((root / "stations/RM-STATION-01/client.pem").read_bytes(),
                            (root / "stations/RM-STATION-01/client.key.pem").read_bytes())

    def send(chunk):
        creds = grpc.ssl_channel_credentials((tls / "tls-ca.pem").read_bytes(), cc.key, cc.cert)
        with grpc.secure_channel(f"localhost:{port}", creds, options=CHANNEL_OPTIONS) as ch:
            stub = pb_grpc.PersonalizerStub(ch)
            for req in chunk:
                while True:   # a caller retries with the same request id until it gets an answer
                    try:
                        r = stub.SubmitIssue(req, timeout=5, wait_for_ready=True)
                        with lock:
                            answered[req.request_id] = r.state
                        break
                    except grpc.RpcError as exc:
                        assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                              grpc.StatusCode.CANCELLED), exc
                        time.sleep(0.05)

    threads = [threading.Thread(target=send, args=(reqs[i::senders],), name=f"sender-{i}") for i in range(senders)]
    for t in threads:
        t.start()
    at_kill = []
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(0.05, 0.6))
            with lock:
                at_kill.append(len(answered))
            d.proc.kill()                       # SIGKILL: no shutdown code runs
            d.proc.wait(10)
            d = helpers.DaemonProcess(cfg)
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "senders did not finish"
        # every caller gets its result by request id after the restarts
        creds = grpc.ssl_channel_credentials((tls / "tls-ca.pem").read_bytes(), cc.key, cc.cert)
        final = {}
        with grpc.secure_channel(f"localhost:{port}", creds) as ch:
            stub = pb_grpc.PersonalizerStub(ch)
            deadline = time.monotonic() + 30
            for req in reqs:
                while True:
                    r = stub.GetRequest(pb.GetRequestRequest(request_id=req.request_id), timeout=10)
                    if r.state == pb.REQUEST_STATE_ISSUED or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                final[req.request_id] = r
    finally:
        assert d.stop() == 0
    assert len(answered) == requests
    assert any(0 < n < requests for n in at_kill), f"no kill landed mid-stream: answered at kills {at_kill}"
    lost = [rid for rid, r in final.items() if r.state != pb.REQUEST_STATE_ISSUED]
    assert lost == [], f"{len(lost)} accepted requests not issued: {lost[:5]}"
    db = sqlite3.connect(root / "data" / "requests.sqlite")   # the CA's own rows, in the store's file (issue 16)
    rows = db.execute("SELECT request_id, COUNT(*), MIN(serial_hex) FROM ca_certificates GROUP BY request_id").fetchall()
    db.close()
    per_request = {rid: (n, serial) for rid, n, serial in rows}
    assert len(per_request) == requests and all(n == 1 for n, _ in per_request.values())
    mismatched = [rid for rid, r in final.items() if per_request[rid][1] != r.certificate.serial_hex]
    assert mismatched == [], "a caller was given a certificate other than the one the CA recorded"
    return {"requests": requests, "kills": kills, "answered_at_kills": at_kill}


def test_sigkill_sample_loses_nothing_and_never_issues_twice(deployment, tmp_path):
    out = _crash_round(deployment, tmp_path, requests=400, kills=3)
    print(out)


@pytest.mark.slow
def test_sigkill_soak(deployment, tmp_path):
    _crash_round(deployment, tmp_path, requests=1500, kills=25, seed=int(time.time()))
