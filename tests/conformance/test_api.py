"""RunConformance on the local API in process: without a station configuration, or without a card, the
caller gets one line that says what to do (no run, nothing sent to a card)."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from agent.api.server import AgentFacts, AgentLocalService, start_server
from agent.devices.registry import DeviceRegistry
from proto.cns.v1 import agent_pb2 as pb
from proto.cns.v1 import agent_pb2_grpc as pb_grpc


class Ops:        # the facade's public parts the handler reads; never asked to connect here
    def __init__(self, registry):
        self.ops, self.registry, self.catalog = object(), registry, type("C", (), {"models": {}})()

    def connect(self, reader):
        raise AssertionError("no card operation may start")


async def _call(sock, operations) -> grpc.aio.AioRpcError:
    registry = operations.registry if operations else DeviceRegistry()
    registry.reader_added("R0")
    facts = AgentFacts(version="t", socket_path=str(sock), profiles_dir="", model_ids=[], pcsc_status=lambda: "ok")
    server = await start_server(sock, AgentLocalService(registry, facts, operations))
    try:
        async with grpc.aio.insecure_channel(f"unix:{sock}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in pb_grpc.AgentLocalStub(ch).RunConformance(pb.ConformanceRequest(reader="R0"),
                                                                         timeout=10):
                    pass
            return err.value
    finally:
        await server.stop(1)


def test_without_station_config(tmp_path):
    err = asyncio.run(_call(tmp_path / "a.sock", None))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "cns-agent run --config" in err.details()


def test_without_card_or_with_an_unknown_one(tmp_path):
    registry = DeviceRegistry()
    err = asyncio.run(_call(tmp_path / "b.sock", Ops(registry)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and err.details() == "no card in 'R0': insert it"
    registry.card_inserted("R0", b"\x3b\x02\x14\x50", supported=False)
    err = asyncio.run(_call(tmp_path / "c.sock", Ops(registry)))
    assert "not a known CNS model" in err.details()
