"""The AgentLocal service in process: list, watch (snapshot then events), info, socket mode."""
from __future__ import annotations

import asyncio
import os
import stat
import threading

import grpc
import pytest

from agent.api.rundir import RunDirError
from agent.api.server import AgentFacts, AgentLocalService, start_server
from agent.devices.registry import DeviceRegistry
from proto.cns.v1 import agent_pb2 as pb
from proto.cns.v1 import agent_pb2_grpc as pb_grpc


def facts(path) -> AgentFacts:
    return AgentFacts(version="t", socket_path=str(path), profiles_dir="", model_ids=["m"], pcsc_status=lambda: "ok")


def test_list_watch_info(tmp_path):
    sock = tmp_path / "run" / "agent.sock"
    registry = DeviceRegistry()
    registry.reader_added("R0")

    async def scenario():
        server = await start_server(sock, AgentLocalService(registry, facts(sock)))
        try:
            assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
            assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700
            with pytest.raises(RunDirError, match="already runs"):
                await start_server(sock, AgentLocalService(registry, facts(sock)))
            async with grpc.aio.insecure_channel(f"unix:{sock}") as ch:
                stub = pb_grpc.AgentLocalStub(ch)
                info = await stub.GetAgentInfo(pb.GetAgentInfoRequest(), timeout=5)
                assert info.pid == os.getpid() and list(info.model_ids) == ["m"] and info.pcsc_status == "ok"
                stream = stub.WatchDevices(pb.WatchDevicesRequest(), timeout=10)
                first = await stream.read()
                assert first.kind == pb.DEVICE_EVENT_KIND_SNAPSHOT and [r.name for r in first.snapshot] == ["R0"]

                def from_monitor_thread():
                    registry.card_inserted("R0", b"\x3b\x02\x14\x50", supported=False)
                    registry.card_removed("R0", interrupted=True)
                t = threading.Thread(target=from_monitor_thread)
                t.start()
                inserted = await stream.read()
                removed = await stream.read()
                t.join()
                assert inserted.kind == pb.DEVICE_EVENT_KIND_CARD_INSERTED
                assert inserted.reader.card.state == pb.DEVICE_CARD_STATE_UNSUPPORTED
                assert inserted.reader.card.atr_hex == "3B021450"
                assert removed.kind == pb.DEVICE_EVENT_KIND_CARD_REMOVED and removed.interrupted
                assert removed.sequence == inserted.sequence + 1
                stream.cancel()
                listed = await stub.ListDevices(pb.ListDevicesRequest(), timeout=5)
                assert listed.sequence == removed.sequence and not listed.readers[0].card_present
        finally:
            await server.stop(1)

    asyncio.run(scenario())
