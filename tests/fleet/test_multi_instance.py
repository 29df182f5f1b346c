"""Beyond one machine (issue 15 item 8): two ``cns-personalizer serve`` processes over one PostgreSQL store
(the session's Patroni cluster, ``[store] backend = "postgresql"``) behind haproxy (Debian's, TCP mode: TLS
stays end to end). Agents land on either instance; a command or a rollout created through one reaches agents
connected to the other (LISTEN/NOTIFY; one instance steps rollouts); when one instance is killed (SIGKILL) its
agents reconnect through haproxy to the other and get the commands created meanwhile, and the other instance
takes over the rollouts."""
from __future__ import annotations

import asyncio
import csv
import io
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

import pytest
from cryptography.hazmat.primitives import serialization

from agent.fleet import DeviceInfo, FleetAgent
from personalizer import deploy
from proto.cns.v1 import fleet_pb2 as pb, fleet_pb2_grpc
from tests.conftest import require
from tests.continuity.test_daemon_postgresql import _site_config
from tests.fleet import support
from tests.fleet.test_status_page import Dom, _get
from tests.fleet.test_stream import FAST
from tests.personalizer import helpers

AGENTS = 4

HAPROXY_CFG = """\
global
    stats socket {sock} mode 600 level admin
defaults
    mode tcp
    timeout connect 1s
    timeout client 1h
    timeout server 1h
    retries 2
    option redispatch
frontend fleet
    bind 127.0.0.1:{port}
    default_backend daemons
backend daemons
    balance roundrobin
    server a 127.0.0.1:{a} check inter 200ms fall 1 rise 1
    server b 127.0.0.1:{b} check inter 200ms fall 1 rise 1
"""


def _sessions(sock: str) -> dict[str, int]:
    """Current connections per haproxy server (``show stat`` on its admin socket)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
    return {r["svname"]: int(r["scur"]) for r in rows if r["pxname"] == "daemons" and r["svname"] in ("a", "b")}


@pytest.fixture
def haproxy_ok():
    require([] if shutil.which("haproxy") else ["haproxy (apt-get install haproxy)"])


def test_two_instances_one_fleet_commands_cross_and_a_killed_instance_loses_none(pg_session_cluster, haproxy_ok,
                                                                                   tmp_path):
    cluster = pg_session_cluster
    dep = deploy.init_deployment(tmp_path / "cns", chamber="RM", station_id="RM-STATION-01", listen="127.0.0.1:0",
                                 ca_key_bits=2048)
    tag = uuid.uuid4().hex[:8]   # the session's database is shared: these stations and this model are this test's
    model = f"tok-{tag}"
    ca = support.ModelCA(model)
    for site in ("a", "b"):   # the model's attestation CA, where each daemon looks for it
        roots = dep.root / f"data-{site}" / "fleet-model-roots"
        roots.mkdir(parents=True)
        (roots / f"{model}.pem").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    dep.server_config.write_text(dep.server_config.read_text().replace("[status_page]\nenabled = false",
                                                                       "[status_page]\nenabled = true"))
    a = helpers.DaemonProcess(_site_config(dep, cluster, "a", enrollment=True))   # first: it steps the rollouts
    b = helpers.DaemonProcess(_site_config(dep, cluster, "b", enrollment=False))
    line = b.proc.stdout.readline()
    assert "status page on port" in line, line
    b_page = int(line.rsplit(" ", 1)[1])
    run_dir = tempfile.mkdtemp(prefix="cns-haproxy-")   # a unix socket path must stay under 108 bytes
    port, sock = support.free_port(), os.path.join(run_dir, "admin.sock")
    (tmp_path / "haproxy.cfg").write_text(HAPROXY_CFG.format(sock=sock, port=port, a=a.port, b=b.port))
    proxy = subprocess.Popen([shutil.which("haproxy"), "-db", "-f", str(tmp_path / "haproxy.cfg")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not os.path.exists(sock):
        assert proxy.poll() is None and time.monotonic() < deadline, f"haproxy did not start: {proxy.stderr.read()}"
        time.sleep(0.05)
    stations = [f"urn:cns:station:RM:MI-{tag}-{i}" for i in range(AGENTS)]

    async def go():
        executors = [support.TokenExecutor(ca) for _ in range(AGENTS)]
        tasks = []
        for i, ex in enumerate(executors):
            cfg = support.station(dep, tmp_path / f"st{i}", port, sid=f"MI-{tag}-{i}")
            inventory = support.FakeInventory(readers=[], devices=[DeviceInfo(serial=f"TK-{tag}-{i}", kind="token",
                                                                              model=model, token_release="r1")])
            tasks.append(asyncio.create_task(FleetAgent(cfg, inventory, ex, version="1", options=FAST).run()))
        admin_a = support.aio_channel(dep, a.port, support.admin_cert(dep))
        admin_b = support.aio_channel(dep, b.port, support.admin_cert(dep))
        fa, fb = fleet_pb2_grpc.FleetAdminStub(admin_a), fleet_pb2_grpc.FleetAdminStub(admin_b)

        async def connected(stub, want: int):
            page = await stub.ListStations(pb.FleetInventoryQuery(search=f"MI-{tag}"))
            return page.total == AGENTS and sum(s.connected for s in page.stations) == want

        async def rollout_done(stub, rid):
            st = await stub.GetRollout(pb.FleetRolloutRef(rollout_id=rid))
            assert st.state in (pb.FLEET_ROLLOUT_RUNNING, pb.FLEET_ROLLOUT_COMPLETED), st
            return st if st.state == pb.FLEET_ROLLOUT_COMPLETED else None

        def spec(release):
            return pb.FleetRolloutSpec(name=f"{release} to {model}", release=release, model=model, group_size=2,
                                       rate_per_minute=1000, timeout_seconds=600)

        async def all_done(stub, ids):
            states = [(await stub.GetCommand(pb.FleetCommandRef(command_id=i))).state for i in ids]
            return all(s == pb.FLEET_COMMAND_SUCCEEDED for s in states)

        try:
            await support.until(lambda: connected(fb, AGENTS), timeout=30, what="every agent connected")
            spread = _sessions(sock)
            assert spread["a"] >= 1 and spread["b"] >= 1 and sum(spread.values()) == AGENTS, spread
            # each instance reads the inventory the other's agents filed, connected as they are
            assert await connected(fa, AGENTS)
            # and B's status page counts them all, with the streams B itself holds
            status, _, body = _get(b_page, dep, support.admin_cert(dep))
            dom = Dom(body)
            assert status == 200 and dom.kv("fleet-totals")["streams on this instance"] == str(spread["b"])
            mine = {r[0]: r[5] for r in dom.tables["fleet-recent"] if r[0].startswith(f"MI-{tag}")}
            assert mine == {f"MI-{tag}-{i}": "yes" for i in range(AGENTS)}, mine
            # commands created through A reach every agent, those on B too
            first = [(await fa.SendCommand(pb.FleetSendCommandRequest(station=st, kind=pb.FLEET_COMMAND_RENEW_DUE)))
                     .command_id for st in stations]
            await support.until(lambda: all_done(fb, first), timeout=30, what="A's commands run on every agent")
            assert sorted(c for ex in executors for c in ex.ran) == sorted(first)
            # a rollout created through B is stepped by A (the one stepper) and reaches the agents on both
            r1 = (await fb.CreateRollout(spec("r2"))).rollout_id
            done = await support.until(lambda: rollout_done(fa, r1), timeout=30, what="the rollout through B")
            assert dict(done.counts) == {"succeeded": AGENTS}

            a.proc.kill()   # SIGKILL: no goodbye to its agents, nothing flushed
            a.proc.wait(10)
            # created through B while A's agents are still cut off: in the store, not in a dead stream
            second = [(await fb.SendCommand(pb.FleetSendCommandRequest(station=st,
                                                                       kind=pb.FLEET_COMMAND_COLLECT_LOGS)))
                      .command_id for st in stations]
            await support.until(lambda: all_done(fb, second), timeout=60,
                                what="B's commands run on every agent, those of the killed instance too")
            assert {c for ex in executors for c in ex.ran} >= set(first + second)
            # B took over stepping rollouts when A's session (and its advisory lock) ended
            r2 = (await fb.CreateRollout(spec("r3"))).rollout_id
            done = await support.until(lambda: rollout_done(fb, r2), timeout=30, what="a rollout after A died")
            assert dict(done.counts) == {"succeeded": AGENTS}
            deadline = time.monotonic() + 10
            while _sessions(sock).get("b") != AGENTS:
                assert time.monotonic() < deadline, _sessions(sock)
                await asyncio.sleep(0.2)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await admin_a.close()
            await admin_b.close()

    try:
        asyncio.run(asyncio.wait_for(go(), 180))
    finally:
        proxy.terminate()
        proxy.wait(10)
        shutil.rmtree(run_dir, ignore_errors=True)
        if a.proc.poll() is None:
            a.stop()
        assert b.stop() == 0, b.proc.stderr.read()
