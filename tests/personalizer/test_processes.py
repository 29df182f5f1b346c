"""``[server] processes = N`` (issue 16): the daemon serves one port from N processes over one store.

What operators rely on: every request issued once whichever process took the connection, every
process really serving (the relay claims carry each process's name), the port still refused to a
foreign daemon, SIGTERM stopping all of them, and a SIGKILLed primary taking its helpers with it so
that a restart on the same port works and nothing is lost or issued twice. Bad values are one clear
line naming the key.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from personalizer import config, deploy
from personalizer.errors import ConfigError
from proto.cns.v1 import personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc
from tests.personalizer import helpers

TIMEOUT = 30
CONNECTIONS = 12


def _with_processes(dep: deploy.Deployment, n: int, listen: str | None = None) -> None:
    text = dep.server_config.read_text().replace("[server]\n", f"[server]\nprocesses = {n}\n", 1)
    if listen:
        text = text.replace('listen = "127.0.0.1:0"', f'listen = "{listen}"')
    dep.server_config.write_text(text)


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def _helper_pids(pid: int) -> list[int]:
    out = []
    for c in _children(pid):
        try:
            with open(f"/proc/{c}/cmdline", "rb") as f:
                if b"--helper" in f.read():
                    out.append(c)
        except OSError:
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _issue_over_many_connections(port: int, dep: deploy.Deployment, n: int) -> list[pb.IssueResponse]:
    """n requests, each over a channel (one TCP connection) of its own, concurrently."""
    station = dep.station_config.parent
    cc = helpers.ClientCert((station / "client.pem").read_bytes(), (station / "client.key.pem").read_bytes())
    creds = grpc.ssl_channel_credentials((dep.root / "tls" / "tls-ca.pem").read_bytes(), cc.key, cc.cert)

    def one(_):
        with grpc.secure_channel(f"localhost:{port}", creds,
                                 options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            return pb_grpc.PersonalizerStub(ch).SubmitIssue(helpers.issue_request(), timeout=TIMEOUT,
                                                            wait_for_ready=True)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def _claimers(dep: deploy.Deployment) -> set[str]:
    db = sqlite3.connect(f"file:{dep.root / 'data' / 'requests.sqlite'}?mode=ro", uri=True)
    try:
        return {r[0] for r in db.execute("SELECT DISTINCT claimed_by FROM outbox WHERE claimed_by IS NOT NULL")}
    finally:
        db.close()


def _ca_rows_per_request(dep: deploy.Deployment) -> dict[str, int]:
    db = sqlite3.connect(f"file:{dep.root / 'data' / 'requests.sqlite'}?mode=ro", uri=True)   # the CA's tables
    try:
        return dict(db.execute("SELECT request_id, COUNT(*) FROM ca_certificates GROUP BY request_id").fetchall())
    finally:
        db.close()


@pytest.mark.parametrize("value", [0, 65, -1])
def test_processes_out_of_range_is_one_clear_error(tmp_path, value):
    dep = deploy.init_deployment(tmp_path / "d", listen="127.0.0.1:0")
    _with_processes(dep, value)
    with pytest.raises(ConfigError) as err:
        config.load(dep.server_config)
    assert "server.processes" in str(err.value) and "1..64" in str(err.value)


def test_processes_default_is_the_number_of_cores(tmp_path):
    """Issue 16: one server process per core unless the file says otherwise; each signs on its own loop."""
    dep = deploy.init_deployment(tmp_path / "d", listen="127.0.0.1:0")
    s = config.load(dep.server_config).server
    cores = len(os.sched_getaffinity(0))
    assert s.processes == min(cores, config.MAX_PROCESSES) and s.workers == (0 if cores > 1 else 1)
    _with_processes(dep, 1)   # one process: signing threads, one per core
    s = config.load(dep.server_config).server
    assert s.processes == 1 and s.workers == cores


def test_with_several_processes_each_signs_on_its_loop_unless_workers_is_set(tmp_path):
    """The processes are the parallelism: signing threads would only contend for each process's GIL."""
    dep = deploy.init_deployment(tmp_path / "d", listen="127.0.0.1:0")
    _with_processes(dep, 2)
    assert config.load(dep.server_config).server.workers == 0
    dep.server_config.write_text(dep.server_config.read_text().replace("[server]\n", "[server]\nworkers = 3\n", 1))
    assert config.load(dep.server_config).server.workers == 3


def test_two_processes_share_the_port_and_issue_each_request_once(tmp_path):
    dep = deploy.init_deployment(tmp_path / "d", listen="127.0.0.1:0")
    _with_processes(dep, 2)
    d = helpers.DaemonProcess(dep.server_config)
    try:
        helper_pids = _helper_pids(d.proc.pid)
        assert len(helper_pids) == 1
        answers = []
        for _ in range(4):   # the kernel picks the process per connection: enough of them reach both
            answers += _issue_over_many_connections(d.port, dep, CONNECTIONS)
            if len(_claimers(dep)) == 2:
                break
        assert all(a.state == pb.REQUEST_STATE_ISSUED for a in answers)
        claimers = _claimers(dep)
        assert len(claimers) == 2 and any(c.endswith("#1") for c in claimers), claimers
        rows = _ca_rows_per_request(dep)
        assert len(answers) == len({a.request_id for a in answers}) == len(rows)
        assert set(rows.values()) == {1}
        # a foreign daemon (another store) on the same port is still refused, naming the holder
        other = deploy.init_deployment(tmp_path / "other", listen=f"127.0.0.1:{d.port}")
        _with_processes(other, 2)
        refused = subprocess.run([str(helpers.VENV_BIN / "cns-personalizer"), "serve", "--config",
                                  str(other.server_config)], capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "server.listen" in refused.stderr and "in use" in refused.stderr
        assert "Traceback" not in refused.stderr
    finally:
        rc = d.stop(30)
    assert rc == 0
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in helper_pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in helper_pids), "a helper outlived the daemon's SIGTERM"


def test_a_killed_primary_takes_its_helpers_and_restarts_on_the_same_port(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dep = deploy.init_deployment(tmp_path / "d", listen="127.0.0.1:0")
    _with_processes(dep, 2, listen=f"127.0.0.1:{port}")
    d = helpers.DaemonProcess(dep.server_config)
    before = _issue_over_many_connections(port, dep, 6)
    helper_pids = _helper_pids(d.proc.pid)
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(10)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in helper_pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert helper_pids and not any(_alive(p) for p in helper_pids), "a helper outlived its SIGKILLed primary"
    again = helpers.DaemonProcess(dep.server_config)
    try:
        assert again.port == port
        after = _issue_over_many_connections(port, dep, 6)
        assert all(a.state == pb.REQUEST_STATE_ISSUED for a in before + after)
        assert set(_ca_rows_per_request(dep).values()) == {1}
    finally:
        assert again.stop(30) == 0


def test_ctrl_c_stops_primary_and_helpers_without_a_restart(tmp_path):
    """Ctrl-C reaches the whole foreground process group: the primary stops its helpers, none is
    taken for crashed and started again."""
    dep = deploy.init_deployment(tmp_path / "d", listen="127.0.0.1:0")
    _with_processes(dep, 2)
    d = helpers.DaemonProcess(dep.server_config, preexec_fn=os.setsid)
    helper_pids = _helper_pids(d.proc.pid)
    assert helper_pids
    os.killpg(d.proc.pid, signal.SIGINT)
    assert d.proc.wait(30) == 0
    err = d.proc.stderr.read()
    # (the card admin worker, personalizer.cardadmin.worker, prints a KeyboardInterrupt traceback on
    # Ctrl-C with one process as well: not this test's subject)
    assert "starting it again" not in err and "helper process" not in err, err
    assert not any(_alive(p) for p in helper_pids)


def test_helper_option_by_hand_is_refused(tmp_path):
    dep = deploy.init_deployment(tmp_path / "d", listen="127.0.0.1:0")
    out = subprocess.run([str(helpers.VENV_BIN / "cns-personalizer"), "serve", "--config", str(dep.server_config),
                          "--helper", "1", "--port", "1"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and "started by the daemon itself" in out.stderr and "Traceback" not in out.stderr

