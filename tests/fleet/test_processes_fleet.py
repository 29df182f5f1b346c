"""The fleet served by several processes of one daemon over one SQLite file (issue 16: ``[server]
processes`` = the number of cores by default). The kernel hands an agent's connection to any process
(SO_REUSEPORT), so a command central IT sends through one process must reach a stream open in another,
promptly, through the database (``fleet.wake_sqlite``: ``PRAGMA data_version`` polled, a wake row
read); exactly one process (the primary) steps rollouts; a helper starting up does not mark the
primary's stations disconnected.

Here the two "processes" are two fleet attachments on one file in this test's process, each with its
own gRPC port, connection and hub, so the test chooses which one an agent talks to. The daemon-level
test (``cns-personalizer serve`` with ``processes = 2``, where the kernel chooses) is
``test_daemon_processes_serve_the_fleet_from_every_process``."""
from __future__ import annotations

import asyncio
import contextlib
import os
import time

from agent.fleet import FleetAgent
from personalizer.fleet.attestation import ModelRoots
from proto.cns.v1 import fleet_pb2 as pb, fleet_pb2_grpc
from tests.fleet import support
from tests.fleet.test_rollouts import MODEL, inventory, spec
from tests.fleet.test_stream import FAST

WAKE_BOUND_SECONDS = 1.0   # POLL_SECONDS is 0.05: a command crosses processes well within this


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 90))


@contextlib.asynccontextmanager
async def two_processes(deployment, db, **options):
    """(primary, helper): each (port, fleet, admin stub)."""
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for leader in (True, False):
            port, fleet = await stack.enter_async_context(
                support.fleet_server(deployment, db, processes=2, leader=leader, heartbeat_seconds=1, **options))
            ch = support.aio_channel(deployment, port, support.admin_cert(deployment))
            stack.push_async_callback(ch.close)
            out.append((port, fleet, fleet_pb2_grpc.FleetAdminStub(ch)))
        yield out


async def _agent(deployment, where, port, sid, executor, inv=None):
    cfg = support.station(deployment, where, port, sid=sid)
    return asyncio.create_task(FleetAgent(cfg, inv or support.FakeInventory(), executor, version="1",
                                          options=FAST).run())


async def _succeeded(admin, command_id):
    st = await admin.GetCommand(pb.FleetCommandRef(command_id=command_id))
    return st if st.state == pb.FLEET_COMMAND_SUCCEEDED else None


def test_a_command_sent_through_one_process_reaches_a_stream_in_the_other(deployment, tmp_path):
    async def go():
        async with two_processes(deployment, tmp_path / "db.sqlite") as ((pa, fa, admin_a), (pb_, fb, admin_b)):
            ex_a, ex_b = support.FakeExecutor(), support.FakeExecutor()
            tasks = [await _agent(deployment, tmp_path / "a", pa, "ST-A", ex_a),
                     await _agent(deployment, tmp_path / "b", pb_, "ST-B", ex_b)]
            try:
                st_a, st_b = "urn:cns:station:RM:ST-A", "urn:cns:station:RM:ST-B"
                await support.until(lambda: fa.hub.is_connected(st_a) and fb.hub.is_connected(st_b),
                                    what="one agent on each process")
                assert not fa.hub.is_connected(st_b) and not fb.hub.is_connected(st_a)
                for admin, station, ex, hub in ((admin_a, st_b, ex_b, fb.hub), (admin_b, st_a, ex_a, fa.hub)):
                    t0 = time.monotonic()
                    sent = await admin.SendCommand(pb.FleetSendCommandRequest(
                        station=station, kind=pb.FLEET_COMMAND_RENEW_DUE))
                    await support.until(lambda: sent.command_id in ex.ran, what="the command at the other process")
                    assert time.monotonic() - t0 < WAKE_BOUND_SECONDS
                    await support.until(lambda: _succeeded(admin, sent.command_id), what="its result")
                # each process woke its own stream for the other's command
                assert fa.bus.received >= 1 and fb.bus.received >= 1
                # a broadcast through the helper reaches both, each once
                sent = await admin_b.BroadcastCommand(pb.FleetBroadcastRequest(
                    query=pb.FleetInventoryQuery(chamber="RM"), kind=pb.FLEET_COMMAND_REFRESH_INVENTORY))
                assert sent.commands == 2
                await support.until(lambda: len(ex_a.ran) == 2 and len(ex_b.ran) == 2,
                                    what="the broadcast on both streams")
                await asyncio.sleep(0.3)   # nothing more arrives: each stream got it once
                assert len(set(ex_a.ran)) == len(ex_a.ran) == 2 and len(set(ex_b.ran)) == len(ex_b.ran) == 2
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    run(go())


def test_a_helper_starting_leaves_the_primarys_stations_connected(deployment, tmp_path):
    async def go():
        db = tmp_path / "db.sqlite"
        async with support.fleet_server(deployment, db, processes=2, leader=True, heartbeat_seconds=1) as (pa, fa):
            task = await _agent(deployment, tmp_path / "a", pa, "ST-A", support.FakeExecutor())
            try:
                await support.until(lambda: fa.hub.is_connected("urn:cns:station:RM:ST-A"))
                async with support.fleet_server(deployment, db, processes=2, leader=False) as (pb_, fb):
                    ch = support.aio_channel(deployment, pb_, support.admin_cert(deployment))
                    try:
                        got = await fleet_pb2_grpc.FleetAdminStub(ch).ListStations(pb.FleetInventoryQuery())
                    finally:
                        await ch.close()
                    assert [(s.station_id, s.connected) for s in got.stations] == [("ST-A", True)]
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    run(go())


def test_one_process_steps_rollouts_and_agents_on_both_get_their_commands(deployment, tmp_path):
    async def go():
        ca = support.ModelCA(MODEL)
        async with two_processes(deployment, tmp_path / "db.sqlite", tick_seconds=0.2,
                                 model_roots=ModelRoots({MODEL: ca.cert})) as ((pa, fa, admin_a), (pb_, fb, admin_b)):
            assert fa.rollouts.leader() and not fb.rollouts.leader()
            execs = [support.TokenExecutor(ca) for _ in range(4)]
            tasks = [await _agent(deployment, tmp_path / f"s{i}", pa if i % 2 == 0 else pb_, f"ST-{i}", ex,
                                  inventory(i)) for i, ex in enumerate(execs)]
            try:
                await support.until(lambda: len(fa.hub) == 2 and len(fb.hub) == 2, what="two agents on each")
                # created through the helper: the primary's ticks send it
                rid = (await admin_b.CreateRollout(spec(group_size=2))).rollout_id

                async def completed():
                    st = await admin_a.GetRollout(pb.FleetRolloutRef(rollout_id=rid))
                    return st if st.state == pb.FLEET_ROLLOUT_COMPLETED else None
                st = await support.until(completed, timeout=30, what="the rollout completed")
                assert st.counts["succeeded"] == 4, st
                assert all(len(ex.ran) == 1 for ex in execs)   # each device once, whichever process it is on
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    run(go())


def _established(port: int) -> dict[int, int]:
    """inode -> 1 for every established TCP connection whose local port is ``port`` (/proc/net/tcp*)."""
    out = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(name).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "01":
                out[int(f[9])] = 1
    return out


def _connections_of(pid: int, port: int) -> int:
    inodes = _established(port)
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and int(target[8:-1]) in inodes:
            n += 1
    return n


def test_daemon_processes_serve_the_fleet_from_every_process(tmp_path):
    """``cns-personalizer serve`` with ``processes = 2``: the kernel spreads the agents' streams over
    both processes; commands sent through either (admin calls land anywhere too) reach every agent."""
    from personalizer import deploy
    from tests.personalizer import helpers
    from tests.personalizer.test_processes import _helper_pids, _with_processes
    dep = deploy.init_deployment(tmp_path / "cns", chamber="RM", station_id="RM-STATION-01", listen="127.0.0.1:0",
                                 ca_key_bits=2048)
    _with_processes(dep, 2)
    d = helpers.DaemonProcess(dep.server_config)

    async def go():
        helper = _helper_pids(d.proc.pid)
        assert len(helper) == 1
        execs, agents, tasks = [], [], []

        def held() -> list[int]:
            return [_connections_of(p, d.port) for p in (d.proc.pid, helper[0])]
        try:
            while len(tasks) < 24:   # until both processes hold streams (each new connection: 1 in 2)
                for _ in range(8):
                    i = len(tasks)
                    execs.append(support.FakeExecutor())
                    agents.append(FleetAgent(support.station(dep, tmp_path / f"st{i}", d.port, sid=f"ST-{i}"),
                                             support.FakeInventory(), execs[-1], version="1", options=FAST))
                    tasks.append(asyncio.create_task(agents[-1].run()))
                await support.until(lambda: all(a.stats.mode == "streaming" for a in agents), what="all streaming")
                if all(held()):
                    break
            assert all(held()), held()
            # every agent's first stream was served, wherever the kernel put it (no refusal, no retry, no polling)
            assert [(a.stats.streams, a.stats.polls, a.stats.last_error) for a in agents] == [(1, 0, "")] * len(agents)
            for round_ in range(2):   # a fresh admin connection each round: it may land on either process
                ch = support.aio_channel(dep, d.port, support.admin_cert(dep))
                try:
                    admin = fleet_pb2_grpc.FleetAdminStub(ch)

                    async def all_connected():
                        got = await admin.ListStations(pb.FleetInventoryQuery(page_size=100))
                        return sum(s.connected for s in got.stations) == len(tasks)
                    await support.until(all_connected, what="every agent's hello")
                    ids = [(await admin.SendCommand(pb.FleetSendCommandRequest(
                        station=f"urn:cns:station:RM:ST-{i}", kind=pb.FLEET_COMMAND_RENEW_DUE))).command_id
                        for i in range(len(tasks))]
                    await support.until(lambda: all(c in ex.ran for c, ex in zip(ids, execs)), timeout=15,
                                        what=f"round {round_}: every agent ran its command")
                    for c in ids:
                        await support.until(lambda: _succeeded(admin, c), what="its result")
                finally:
                    await ch.close()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    try:
        run(go())
    finally:
        assert d.stop(30) == 0, d.proc.stderr.read()



def test_the_primary_counts_the_streams_its_helpers_hold(deployment, tmp_path):
    """The status page's "streams on this instance" (``Fleet.streams``) covers every process of the daemon."""
    async def go():
        db = tmp_path / "db.sqlite"
        async with contextlib.AsyncExitStack() as stack:
            fleets = []
            for process in (0, 1):
                port, fleet = await stack.enter_async_context(support.fleet_server(
                    deployment, db, processes=2, leader=process == 0, daemon="host:db", process=process,
                    heartbeat_seconds=1))
                fleets.append((port, fleet))
            (pa, fa), (pb_, fb) = fleets
            tasks = [await _agent(deployment, tmp_path / f"s{i}", port, f"ST-{i}", support.FakeExecutor())
                     for i, port in enumerate((pa, pb_, pb_))]
            try:
                await support.until(lambda: len(fa.hub) == 1 and len(fb.hub) == 2, what="1 + 2 streams")
                await support.until(lambda: _equals(fa.streams(), 3), timeout=2, what="3 streams counted")
                assert await fb.streams() == 2   # a helper counts its own only
                tasks.pop().cancel()
                await support.until(lambda: _equals(fa.streams(), 2), timeout=5, what="a stream gone")
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    run(go())


async def _equals(coro, want):
    return await coro == want


def test_a_flood_of_hellos_is_counted_once_for_the_whole_daemon(deployment, tmp_path):
    """A station that floods hellos is refused after the daemon's limit whichever process its connections
    reach: with one count per process it could say hello ``processes`` times the limit."""
    import grpc

    from tests.fleet.test_abuse import hello

    async def go():
        async with two_processes(deployment, tmp_path / "db.sqlite", hellos_per_minute=4) as (
                (pa, _fa, _), (pb_, _fb, _)):
            stubs = []
            for port in (pa, pb_):
                cfg = support.station(deployment, tmp_path / "RM-ST-9", port, sid="RM-ST-9")
                ch = support.aio_channel(deployment, port, support.cert_of(cfg))
                stubs.append((ch, fleet_pb2_grpc.FleetStub(ch)))
            try:
                for i in range(4):   # 2 through each process: within the daemon's 4 a minute
                    await stubs[i % 2][1].Poll(pb.FleetPollRequest(messages=[hello()]))
                for _, stub in stubs:   # the 5th is refused by either process
                    try:
                        await stub.Poll(pb.FleetPollRequest(messages=[hello()]))
                    except grpc.aio.AioRpcError as e:
                        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
                        assert "hellos a minute" in e.details()
                    else:
                        raise AssertionError("a hello over the daemon's limit was accepted")
            finally:
                for ch, _ in stubs:
                    await ch.close()
    run(go())
