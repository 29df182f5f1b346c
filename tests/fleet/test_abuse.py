"""Bad input and abuse on the fleet services (issue 15 item 7): refused with the right status code, audited,
nothing changed. Raw gRPC clients with real station and admin certificates."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from personalizer.fleet import store as fs
from proto.cns.v1 import fleet_pb2 as pb, fleet_pb2_grpc
from tests.fleet import support

A = "urn:cns:station:RM:RM-ST-1"
B = "urn:cns:station:RM:RM-ST-2"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def hello(n_devices: int = 1, version: str = "1") -> pb.FleetAgentMessage:
    return pb.FleetAgentMessage(hello=pb.FleetHello(agent_version=version, readers=["r0"], devices=[
        pb.FleetDevice(serial=f"S{i}", model="m") for i in range(n_devices)]))


class Env:
    def __init__(self, deployment, tmp_path, port, fleet):
        self.fleet = fleet
        self.channels = []
        self.stubs = {}
        for sid in ("RM-ST-1", "RM-ST-2"):
            cfg = support.station(deployment, tmp_path / sid, port, sid=sid)
            ch = support.aio_channel(deployment, port, support.cert_of(cfg))
            self.channels.append(ch)
            self.stubs[sid] = (fleet_pb2_grpc.FleetStub(ch), fleet_pb2_grpc.FleetAdminStub(ch))
        ch = support.aio_channel(deployment, port, support.admin_cert(deployment))
        self.channels.append(ch)
        self.admin = fleet_pb2_grpc.FleetAdminStub(ch)
        self.admin_fleet = fleet_pb2_grpc.FleetStub(ch)

    async def close(self):
        for ch in self.channels:
            await ch.close()

    async def refused(self, call, code: grpc.StatusCode) -> str:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call
        assert e.value.code() == code, e.value.details()
        rows = await self.fleet.store.audit_rows(1)
        assert rows and rows[0]["outcome"] == "refused"
        return e.value.details()


def with_env(deployment, tmp_path, body, **opts):
    async def go():
        async with support.fleet_server(deployment, tmp_path / "db.sqlite", **opts) as (port, fleet):
            env = Env(deployment, tmp_path, port, fleet)
            try:
                await body(env)
            finally:
                await env.close()
    run(go())


def test_a_result_for_a_command_sent_to_another_station_is_refused_and_changes_nothing(deployment, tmp_path):
    async def body(env):
        a, _ = env.stubs["RM-ST-1"]
        b, _ = env.stubs["RM-ST-2"]
        await a.Poll(pb.FleetPollRequest(messages=[hello()]))
        await b.Poll(pb.FleetPollRequest(messages=[hello()]))
        st = await env.admin.SendCommand(pb.FleetSendCommandRequest(station=A, kind=pb.FLEET_COMMAND_RENEW_DUE))
        forged = pb.FleetAgentMessage(result=pb.FleetCommandResult(command_id=st.command_id, success=True))
        msg = await env.refused(b.Poll(pb.FleetPollRequest(messages=[forged])), grpc.StatusCode.NOT_FOUND)
        assert "was not sent to this station" in msg
        assert (await env.fleet.store.get_command(st.command_id)).state == fs.PENDING
        # A gets it, acks and finishes it; the same result again (its first write cut by a stream that ended)
        # changes nothing and is not counted twice; a different result after the final one is refused
        got = await a.Poll(pb.FleetPollRequest())
        assert [c.command_id for c in got.commands] == [st.command_id]
        ack = pb.FleetAgentMessage(ack=pb.FleetCommandAck(command_id=st.command_id, accepted=True))
        ok = pb.FleetAgentMessage(result=pb.FleetCommandResult(command_id=st.command_id, success=True))
        await a.Poll(pb.FleetPollRequest(messages=[ack, ok]))
        reports = dict(env.fleet.figures.reports)
        await a.Poll(pb.FleetPollRequest(messages=[ok]))
        assert dict(env.fleet.figures.reports) == reports
        other = pb.FleetAgentMessage(result=pb.FleetCommandResult(command_id=st.command_id, success=False,
                                                                   message="it failed after all"))
        await env.refused(a.Poll(pb.FleetPollRequest(messages=[other])), grpc.StatusCode.FAILED_PRECONDITION)
        got = await env.fleet.store.get_command(st.command_id)
        assert (got.state, got.message) == (fs.SUCCEEDED, "")
    with_env(deployment, tmp_path, body)


def test_oversize_inventory_is_refused_and_nothing_is_recorded(deployment, tmp_path):
    async def body(env):
        a, _ = env.stubs["RM-ST-1"]
        msg = await env.refused(a.Poll(pb.FleetPollRequest(messages=[hello(65)])), grpc.StatusCode.INVALID_ARGUMENT)
        assert "at most 64 devices" in msg
        long_version = hello(version="x" * 200)
        await env.refused(a.Poll(pb.FleetPollRequest(messages=[long_version])), grpc.StatusCode.INVALID_ARGUMENT)
        assert (await env.admin.ListStations(pb.FleetInventoryQuery())).total == 0
    with_env(deployment, tmp_path, body)


def test_a_flood_of_hellos_is_refused(deployment, tmp_path):
    async def body(env):
        a, _ = env.stubs["RM-ST-1"]
        for _ in range(3):
            await a.Poll(pb.FleetPollRequest(messages=[hello()]))
        msg = await env.refused(a.Poll(pb.FleetPollRequest(messages=[hello(2)])),
                                grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert "hellos a minute" in msg
        devices = await env.admin.ListDevices(pb.FleetInventoryQuery())
        assert [d.device.serial for d in devices.devices] == ["S0"]   # the refused hello changed nothing
        # another station is not affected
        b, _ = env.stubs["RM-ST-2"]
        await b.Poll(pb.FleetPollRequest(messages=[hello()]))
    with_env(deployment, tmp_path, body, hellos_per_minute=3)


def test_a_stream_sends_one_hello_first(deployment, tmp_path):
    async def body(env):
        a, _ = env.stubs["RM-ST-1"]
        call = a.Connect()
        await call.write(pb.FleetAgentMessage(heartbeat=pb.FleetHeartbeat(sequence=1)))
        await env.refused(call.read(), grpc.StatusCode.INVALID_ARGUMENT)
        call = a.Connect()
        await call.write(hello())
        first = await call.read()
        assert first.welcome.station == A
        await call.write(hello(version="2"))
        await env.refused(call.read(), grpc.StatusCode.FAILED_PRECONDITION)
        st = (await env.admin.ListStations(pb.FleetInventoryQuery())).stations
        assert [s.agent_version for s in st] == ["1"]
        # polling without a hello first
        b, _ = env.stubs["RM-ST-2"]
        beat = pb.FleetAgentMessage(heartbeat=pb.FleetHeartbeat(sequence=1))
        await env.refused(b.Poll(pb.FleetPollRequest(messages=[beat])), grpc.StatusCode.FAILED_PRECONDITION)
    with_env(deployment, tmp_path, body)


def test_roles_are_exact_station_cannot_administer_admin_cannot_connect(deployment, tmp_path):
    async def body(env):
        _, a_admin = env.stubs["RM-ST-1"]
        await env.refused(a_admin.ListStations(pb.FleetInventoryQuery()), grpc.StatusCode.PERMISSION_DENIED)
        await env.refused(a_admin.SendCommand(pb.FleetSendCommandRequest(station=A, kind=1)),
                          grpc.StatusCode.PERMISSION_DENIED)
        await env.refused(env.admin_fleet.Poll(pb.FleetPollRequest(messages=[hello()])),
                          grpc.StatusCode.PERMISSION_DENIED)
        rows = await env.fleet.store.audit_rows(10)
        assert {r["actor"] for r in rows} == {A, "urn:cns:admin:central-it"}
        assert (await env.fleet.store.list_stations(fs.Query())).total == 0
    with_env(deployment, tmp_path, body)


def test_admin_input_errors_are_one_clear_line(deployment, tmp_path):
    async def body(env):
        msg = await env.refused(env.admin.SendCommand(pb.FleetSendCommandRequest(station=A, kind=1)),
                                grpc.StatusCode.NOT_FOUND)
        assert "has never connected" in msg
        msg = await env.refused(env.admin.SendCommand(pb.FleetSendCommandRequest(station="RM-ST-1", kind=1)),
                                grpc.StatusCode.INVALID_ARGUMENT)
        assert "urn:cns:station:<chamber>:<id>" in msg
        await env.refused(env.admin.ListStations(pb.FleetInventoryQuery(page_token="zz")),
                          grpc.StatusCode.INVALID_ARGUMENT)
        await env.refused(env.admin.ExpiringCertificates(pb.FleetExpiringQuery(within_days=0)),
                          grpc.StatusCode.INVALID_ARGUMENT)
    with_env(deployment, tmp_path, body)
