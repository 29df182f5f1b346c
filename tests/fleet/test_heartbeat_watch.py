"""A stream silent for 3 heartbeats is closed (a dead agent behind a proxy), by one watchdog for all streams:
no task or timer per stream per heartbeat (issue 15 item 6: 20,000 streams' memory and idle CPU)."""
from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from proto.cns.v1 import fleet_pb2 as pb, fleet_pb2_grpc
from tests.fleet import support
from tests.fleet.test_stream import run

HELLO = pb.FleetAgentMessage(hello=pb.FleetHello(agent_version="1"))


async def _open(deployment, tmp_path, port, sid):
    cfg = support.station(deployment, tmp_path / sid, port, sid=sid)
    ch = support.aio_channel(deployment, port, support.cert_of(cfg))
    call = fleet_pb2_grpc.FleetStub(ch).Connect()
    await call.write(HELLO)
    first = await call.read()
    assert first.WhichOneof("body") == "welcome"
    return ch, call


def test_a_silent_stream_is_ended_after_3_heartbeats_and_a_heartbeating_one_stays(deployment, tmp_path):
    async def go():
        async with support.fleet_server(deployment, tmp_path / "db.sqlite", heartbeat_seconds=0.4) as (port, fleet):
            ch2, alive = await _open(deployment, tmp_path, port, "ALIVE")
            t0 = time.monotonic()   # before the silent stream's hello: it is 3 heartbeats old at the earliest
            ch1, silent = await _open(deployment, tmp_path, port, "SILENT")
            try:
                async def beat():
                    for k in range(30):
                        await alive.write(pb.FleetAgentMessage(heartbeat=pb.FleetHeartbeat(sequence=k)))
                        await asyncio.sleep(0.2)
                beating = asyncio.create_task(beat())
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    await silent.read()
                assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "no heartbeat" in ended.value.details()
                took = time.monotonic() - t0
                assert 1.2 <= took < 3.0, took            # 3 heartbeats, checked every half heartbeat
                await asyncio.sleep(1.5)                   # the heartbeating stream outlives 3 more heartbeats
                assert fleet.hub.is_connected("urn:cns:station:RM:ALIVE")
                assert not fleet.hub.is_connected("urn:cns:station:RM:SILENT")
                beating.cancel()
            finally:
                await ch1.close()
                await ch2.close()
    run(go())


def _our_tasks() -> int:
    """Tasks not run by grpc's own code (its server's call tasks, the test clients' status tasks)."""
    code = (getattr(t.get_coro(), "cr_code", None) for t in asyncio.all_tasks())   # an asend has none: ours
    return sum(1 for c in code if c is None or "/grpc/" not in c.co_filename)


def test_an_open_stream_costs_the_daemon_one_task_besides_grpcs_own(deployment, tmp_path):
    """Per stream: our reader beside grpc's call tasks; the heartbeat watchdog is one task for all of them."""
    async def go():
        async with support.fleet_server(deployment, tmp_path / "db.sqlite", heartbeat_seconds=30) as (port, fleet):
            ch, first = await _open(deployment, tmp_path, port, "T-0")
            await asyncio.sleep(0.2)
            before = _our_tasks()
            chans = [ch]
            try:
                for k in range(1, 11):
                    c, _call = await _open(deployment, tmp_path, port, f"T-{k}")
                    chans.append(c)
                await support.until(lambda: len(fleet.hub) == 11)
                await asyncio.sleep(0.3)
                per_stream = (_our_tasks() - before) / 10
                assert per_stream == 1.0, per_stream   # the reader; a wait_for per read made it 2
            finally:
                for c in chans:
                    await c.close()
    run(go())
