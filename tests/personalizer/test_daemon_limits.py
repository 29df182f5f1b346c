"""Acceptance: the daemon cannot be doubled, and its gRPC transport settings take effect.

Each gRPC channel argument we set is one grpc silently ignores when misspelled, so each
has a test that fails if the daemon ran with grpc's default instead:
keepalive (min ping interval), handshake timeout, connection cap, SO_REUSEPORT off.
One ``cns-personalizer init`` deployment; every daemon gets its own config file and
store (``variant``), as one store takes one daemon.
"""
from __future__ import annotations

import socket
import subprocess
import threading
import time
import uuid

import grpc
import pytest

from personalizer import deploy
from proto.cns.v1 import admin_pb2 as apb, admin_pb2_grpc as apb_grpc
from proto.cns.v1 import personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc
from tests.personalizer import helpers

TIMEOUT = 20


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits") / "cns"
    return deploy.init_deployment(root, listen="127.0.0.1:0", ca_key_bits=2048)


def variant(dep, name: str, *, server: str = "", extra: str = "", data_dir: str | None = None,
            listen: str = "127.0.0.1:0"):
    """A copy of the deployment's config with extra [server] keys, more sections and its own store."""
    text = dep.server_config.read_text()
    text = text.replace('listen = "127.0.0.1:0"', f'listen = "{listen}"\n{server}')
    text = text.replace('data_dir = "data"', f'data_dir = "{data_dir or "data-" + name}"')
    path = dep.server_config.with_name(f"personalizer-{name}.toml")
    path.write_text(text + extra)
    return path


def station_channel(dep, port: int, options=()):
    d = dep.station_config.parent
    cc = helpers.ClientCert((d / "client.pem").read_bytes(), (d / "client.key.pem").read_bytes())
    creds = grpc.ssl_channel_credentials(root_certificates=(dep.root / "tls" / "tls-ca.pem").read_bytes(),
                                         private_key=cc.key, certificate_chain=cc.cert)
    return grpc.secure_channel(f"localhost:{port}", creds, options=list(options))


def _serve(config, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(helpers.VENV_BIN / "cns-personalizer"), "--log-level", "WARNING", "serve",
                           "--config", str(config)], capture_output=True, text=True, timeout=timeout)


# -- keepalive: a long WatchRequest stream is not cut with GOAWAY too_many_pings -------------------

MAINTENANCE_NOW = """
[[maintenance]]
id = "hold-everything"
starts_at = {start}
ends_at = {end}
reason = "keeps requests pending so a watch stream stays open"
"""


def _maintenance_now() -> str:
    now = time.time()
    import datetime as dt
    f = lambda t: dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat()   # noqa: E731
    return MAINTENANCE_NOW.format(start=f'"{f(now - 60)}"', end=f'"{f(now + 3600)}"')


def test_watch_stream_survives_client_keepalive_pings(dep):
    # The client pings every 0.5 s on an idle stream; the server permits pings every 0.2 s. With grpc's
    # default (5 minutes, i.e. the option not applied) the third ping is a strike too many: GOAWAY.
    cfg = variant(dep, "keepalive", server="keepalive_min_ping_seconds = 0.2", extra=_maintenance_now())
    d = helpers.DaemonProcess(cfg)
    try:
        ch = station_channel(dep, d.port, options=[
            ("grpc.keepalive_time_ms", 500), ("grpc.keepalive_timeout_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)])
        stub = pb_grpc.PersonalizerStub(ch)
        first = stub.SubmitIssue(helpers.issue_request(), timeout=TIMEOUT)
        assert first.state in (pb.REQUEST_STATE_RECEIVED, pb.REQUEST_STATE_PENDING)
        stream = stub.WatchRequest(pb.GetRequestRequest(request_id=first.request_id), timeout=5)
        got, ended = [], {}
        try:
            for update in stream:
                got.append(update.state)
        except grpc.RpcError as exc:
            ended = {"code": exc.code(), "details": exc.details()}
        assert got and got[0] in (pb.REQUEST_STATE_RECEIVED, pb.REQUEST_STATE_PENDING)
        # the stream lasted its whole deadline (10 pings), it was not cut by the server
        assert ended["code"] == grpc.StatusCode.DEADLINE_EXCEEDED, ended
        ch.close()
    finally:
        assert d.stop() == 0


# -- one daemon per store, one per port --------------------------------------------------------------

def test_second_daemon_on_the_same_store_refuses_and_names_the_first(dep):
    cfg = variant(dep, "lock-a", data_dir="data-shared")
    other = variant(dep, "lock-b", data_dir="data-shared")
    d = helpers.DaemonProcess(cfg)
    try:
        r = _serve(other)
        assert r.returncode == 1
        err = r.stderr.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert "in use by another cns-personalizer" in err and f"pid {d.proc.pid}" in err, err
        # the first daemon still serves
        ch = station_channel(dep, d.port)
        assert pb_grpc.PersonalizerStub(ch).GetCAStatus(pb.GetCAStatusRequest(), timeout=TIMEOUT).connector
        ch.close()
    finally:
        assert d.stop() == 0
    # after it stopped the store is free again
    d2 = helpers.DaemonProcess(other)
    assert d2.stop() == 0


def test_second_daemon_on_the_same_port_refuses_and_names_the_holder(dep):
    first = helpers.DaemonProcess(variant(dep, "port-a"))
    try:
        r = _serve(variant(dep, "port-b", listen=f"127.0.0.1:{first.port}"))
        assert r.returncode == 1, r.stdout
        err = r.stderr.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert f"cannot listen on 127.0.0.1:{first.port}" in err and f"pid {first.proc.pid}" in err, err
        assert "listening on port" not in r.stdout
    finally:
        assert first.stop() == 0


# -- admin input: maintenance windows are validated, ended, removed; a bad stored row is skipped -----

def admin_channel(dep, port: int):
    d = dep.admin_config.parent
    cc = helpers.ClientCert((d / "client.pem").read_bytes(), (d / "client.key.pem").read_bytes())
    return helpers.channel(port, dep.root / "tls", cc)


@pytest.fixture(scope="module")
def admin_daemon(dep):
    d = helpers.DaemonProcess(variant(dep, "admin"))
    ch = admin_channel(dep, d.port)
    yield d, apb_grpc.QueueAdminStub(ch), pb_grpc.PersonalizerStub(ch)
    ch.close()
    assert d.stop() == 0


NOW = int(time.time())


@pytest.mark.parametrize("starts_at,ends_at,field,text", [
    (NOW + 3600, 253402300800 + 3600, "ends_at", "not milliseconds"),          # after year 9999
    ((NOW + 3600) * 1000, (NOW + 7200) * 1000, "starts_at", "not milliseconds"),  # milliseconds
    (NOW + 7200, NOW + 3600, "ends_at", "after starts_at"),
    (NOW + 3600, NOW + 3600 + 30 * 86400, "ends_at", "at most 7 days"),
    (NOW - 7200, NOW - 3600, "ends_at", "already ended"),
    (0, NOW + 3600, "starts_at", "between 2000-01-01"),
    (-(1 << 62), NOW + 3600, "starts_at", "not milliseconds"),
])
def test_add_maintenance_refuses_absurd_windows(admin_daemon, starts_at, ends_at, field, text):
    _, queue, _ = admin_daemon
    before = queue.ListMaintenance(apb.ListMaintenanceRequest(), timeout=TIMEOUT).windows
    with pytest.raises(grpc.RpcError) as ei:
        queue.AddMaintenance(pb.MaintenanceWindow(starts_at=starts_at, ends_at=ends_at, reason="typo"),
                             timeout=TIMEOUT)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in ei.value.details() and text in ei.value.details(), ei.value.details()
    assert queue.ListMaintenance(apb.ListMaintenanceRequest(), timeout=TIMEOUT).windows == before


def test_add_maintenance_refuses_long_or_control_reason(admin_daemon):
    _, queue, _ = admin_daemon
    for reason in ("x" * 201, "line\nbreak"):
        with pytest.raises(grpc.RpcError) as ei:
            queue.AddMaintenance(pb.MaintenanceWindow(starts_at=NOW + 3600, ends_at=NOW + 7200, reason=reason),
                                 timeout=TIMEOUT)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "reason" in ei.value.details()


def _cnsctl(dep, port, *args) -> subprocess.CompletedProcess:
    cfg = dep.admin_config.read_text().replace('primary = "127.0.0.1:0"', f'primary = "127.0.0.1:{port}"')
    path = dep.admin_config.with_name(f"admin-{port}.toml")
    path.write_text(cfg)
    return subprocess.run([str(helpers.VENV_BIN / "cnsctl"), "--config", str(path), "--json", *args],
                          capture_output=True, text=True, timeout=60)


def test_cnsctl_maintenance_end_and_remove(dep, admin_daemon):
    import json
    d, queue, station = admin_daemon
    iso = lambda t: time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t))   # noqa: E731
    now = int(time.time())
    r = _cnsctl(dep, d.port, "maintenance", "add", "--id", "now-window", "--start", iso(now - 5),
                "--end", iso(now + 3600), "--reason", "emergency")
    assert r.returncode == 0, r.stderr
    assert station.GetCAStatus(pb.GetCAStatusRequest(), timeout=TIMEOUT).in_maintenance
    r = _cnsctl(dep, d.port, "maintenance", "add", "--id", "later-window", "--start", iso(now + 86400),
                "--end", iso(now + 90000))
    assert r.returncode == 0, r.stderr
    # a future window cannot be "ended", only removed
    r = _cnsctl(dep, d.port, "maintenance", "end", "later-window")
    assert r.returncode == 1 and "FAILED_PRECONDITION" in r.stderr and "remove it instead" in r.stderr, r.stderr
    r = _cnsctl(dep, d.port, "maintenance", "end", "now-window")
    assert r.returncode == 0, r.stderr
    assert not station.GetCAStatus(pb.GetCAStatusRequest(), timeout=TIMEOUT).in_maintenance
    r = _cnsctl(dep, d.port, "maintenance", "remove", "later-window")
    assert r.returncode == 0, r.stderr
    listed = json.loads(_cnsctl(dep, d.port, "maintenance", "list").stdout)["windows"]
    assert not {"now-window", "later-window"} & {w["id"] for w in listed}, listed
    r = _cnsctl(dep, d.port, "maintenance", "remove", "later-window")
    assert r.returncode == 1 and "NOT_FOUND" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cnsctl(dep, d.port, "maintenance", "add", "--start", "tomorrow", "--end", iso(now + 3600))
    assert r.returncode == 2 and "is not a date and time" in r.stderr and "Traceback" not in r.stderr   # usage


def test_unreadable_stored_window_is_reported_and_skipped(dep):
    import sqlite3
    cfg = variant(dep, "badrow")
    d = helpers.DaemonProcess(cfg)   # creates the store
    assert d.stop() == 0
    db = dep.root / "data-badrow" / "requests.sqlite"
    with sqlite3.connect(db) as c:
        c.execute("INSERT INTO maintenance (id, starts_at, ends_at, reason, source) VALUES (?, ?, ?, ?, ?)",
                  ("milliseconds", 1.9e15, 1.9e15 + 3.6e6, "written in ms", "admin"))
        c.execute("INSERT INTO maintenance (id, starts_at, ends_at, reason, source) VALUES (?, ?, ?, ?, ?)",
                  ("good", time.time() + 86400, time.time() + 90000, "fine", "admin"))
    d = helpers.DaemonProcess(cfg)
    try:
        ch = admin_channel(dep, d.port)
        listed = apb_grpc.QueueAdminStub(ch).ListMaintenance(apb.ListMaintenanceRequest(), timeout=TIMEOUT).windows
        assert [w.id for w in listed] == ["good"]
        ch.close()
    finally:
        assert d.stop() == 0
    assert "maintenance window 'milliseconds' skipped" in d.proc.stderr.read()


def test_daemon_that_cannot_serve_exits_non_zero(dep):
    # the PKI HTTP port is taken: start-up fails after the store and the CA are open and the gRPC
    # port is bound; the process must exit with one line, not linger without serving
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = variant(dep, "cannot-serve", extra=f"""
[pki]
enabled = true
http_host = "127.0.0.1"
http_port = {port}
crl_dir = "crl-cannot-serve"
""")
        r = _serve(cfg, timeout=30)
    assert r.returncode == 1
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("cns-personalizer serve:") and str(port) in err and "in use" in err, err
    assert "listening on port" not in r.stdout


# -- no exhaustion by idle or slow clients ---------------------------------------------------------

def _idle_sockets(port: int, n: int, payload: bytes = b"") -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if payload:
            s.sendall(payload)
        out.append(s)
    return out


def _closed_by_server(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def _fd_limits(pid: int) -> tuple[int, int]:
    for line in open(f"/proc/{pid}/limits"):
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open files line")


def _low_fd_limit():
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))   # a stock systemd/login default


def test_handshake_timeout_closes_idle_connections(dep):
    # grpc's default handshake timeout is 120 s: an idle socket still open after 4 s means the option was ignored
    d = helpers.DaemonProcess(variant(dep, "handshake", server="handshake_timeout_seconds = 1"))
    try:
        (s,) = _idle_sockets(d.port, 1)
        assert _closed_by_server(s, 4)
        s.close()
    finally:
        assert d.stop() == 0


def test_connection_cap_refuses_beyond_the_limit(dep):
    # the cap is per server process (each has its own fd budget): one process, so the 11th is the one refused
    d = helpers.DaemonProcess(variant(dep, "cap", server="max_connections = 10\nhandshake_timeout_seconds = 60\n"
                                                         "processes = 1"))
    try:
        idle = _idle_sockets(d.port, 10)
        time.sleep(0.3)
        (extra,) = _idle_sockets(d.port, 1)
        assert _closed_by_server(extra, 2), "the 11th connection was accepted: grpc.max_allowed_incoming_connections ignored"
        assert not _closed_by_server(idle[0], 0.2)
        for s in idle + [extra]:
            s.close()
        # once the idle ones are gone a station connects again
        deadline = time.time() + 10
        ch = station_channel(dep, d.port)
        while True:
            try:
                assert pb_grpc.PersonalizerStub(ch).GetCAStatus(pb.GetCAStatusRequest(), timeout=5).connector
                break
            except grpc.RpcError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        ch.close()
    finally:
        assert d.stop() == 0


PKI = """
[pki]
enabled = true
http_host = "127.0.0.1"
http_port = 0
crl_dir = "crl-{name}"
{more}
"""


def _pki_daemon(dep, name: str, *, server: str = "", more: str = ""):
    import re
    d = helpers.DaemonProcess(variant(dep, name, server=server, extra=PKI.format(name=name, more=more)),
                              preexec_fn=_low_fd_limit)
    m = re.search(r"pki on port (\d+)", d.proc.stdout.readline())
    assert m, "no pki port"
    d.pki_port = int(m.group(1))
    return d


def _get_crl(port: int, timeout: float = 5) -> bytes:
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/crl/cns-issuing-ca.crl", timeout=timeout) as r:
        return r.read()


def test_http_connection_cap_evicts_slow_loris_and_keeps_serving(dep):
    d = _pki_daemon(dep, "loris-cap", more="max_connections = 50\nrequest_timeout_seconds = 60")
    try:
        loris = _idle_sockets(d.pki_port, 200, b"GET /crl/cns-issuing-ca.crl HTTP/1.1\r\nHost: x\r\n")
        assert _get_crl(d.pki_port)[:1] == b"\x30"
        closed = sum(_closed_by_server(s, 0.05) for s in loris)
        assert closed >= 150, f"only {closed} of 200 slow requests were dropped with a cap of 50"
        for s in loris:
            s.close()
    finally:
        assert d.stop() == 0


def test_the_daemon_raises_its_open_files_limit_and_says_so(dep):
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    d = helpers.DaemonProcess(variant(dep, "fd-report"), preexec_fn=_low_fd_limit, log_level="INFO")
    try:
        assert _fd_limits(d.proc.pid) == (hard, hard)
    finally:
        assert d.stop() == 0
    log = d.proc.stderr.read()
    assert f"open files limit {hard} (raised from 1024)" in log, log[-2000:]


def test_1100_idle_and_slow_clients_do_not_stop_issuance_or_crls(dep):
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))   # this test process holds 2,200 sockets too
    # started with the stock soft limit of 1024 open files: the daemon raises it to the hard limit
    d = _pki_daemon(dep, "flood", server="handshake_timeout_seconds = 10")
    try:
        soft, hard = _fd_limits(d.proc.pid)
        assert soft == hard, (soft, hard)
        idle = _idle_sockets(d.port, 1100)
        loris = _idle_sockets(d.pki_port, 1100, b"GET /crl/cns-issuing-ca.crl HTTP/1.1\r\n")
        t0 = time.monotonic()
        ch = station_channel(dep, d.port)
        resp = pb_grpc.PersonalizerStub(ch).SubmitIssue(helpers.issue_request(), timeout=TIMEOUT)
        assert resp.state == pb.REQUEST_STATE_ISSUED and resp.certificate_der
        assert _get_crl(d.pki_port)[:1] == b"\x30"
        assert time.monotonic() - t0 < 10
        ch.close()
        for s in idle + loris:
            s.close()
    finally:
        assert d.stop() == 0
