"""The composition root: ``Agent.build(cfg, *, backends, uplink)`` runs named, supervised tasks.

A backend here is a test ``DeviceBackend`` (it adds one reader to the registry and can be told to fail, as a
monitor that lost its hardware does); the local API is the real gRPC server on a Unix socket."""
from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import grpc
import pytest

import station_config
from agent.app import Agent, AgentConfig, AgentStopped
from agent.devices.backend import DeviceBackend
from proto.cns.v1 import agent_pb2 as pb
from proto.cns.v1 import agent_pb2_grpc as pb_grpc

EXAMPLES = Path(station_config.__file__).parent / "examples"


class TestBackend:
    """A ``DeviceBackend`` for one fake reader; ``fail`` makes its monitor end with an error."""
    __test__ = False

    def __init__(self, registry, catalog, name="test"):
        self.name, self.registry = name, registry
        self.fail = asyncio.Event()
        self.stopped = False

    @property
    def status(self) -> str:
        return "ok"

    async def monitor(self) -> None:
        self.registry.reader_added(f"{self.name} reader")
        try:
            await self.fail.wait()
            raise RuntimeError(f"{self.name}: device gone")
        finally:
            self.stopped = True

    def open_link(self, device: str):
        raise AssertionError("no links in this test")


async def _readers(sock: Path) -> list[str]:
    async with grpc.aio.insecure_channel(f"unix:{sock}") as ch:
        listed = await pb_grpc.AgentLocalStub(ch).ListDevices(pb.ListDevicesRequest(), timeout=5)
    return sorted(r.name for r in listed.readers)


async def _until(predicate, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_each_backend_is_a_supervised_task_and_a_dying_one_stops_the_agent(tmp_path):
    sock = tmp_path / "run" / "agent.sock"
    made: list[TestBackend] = []

    def backend(name):
        def make(registry, catalog):
            made.append(TestBackend(registry, catalog, name))
            return made[-1]
        return make

    async def scenario():
        agent = await Agent.build(AgentConfig(socket=sock), backends=(backend("a"), backend("b")))
        assert agent.task_names == ["local-api", "monitor:a", "monitor:b"]
        assert all(isinstance(b, DeviceBackend) for b in made)
        running = asyncio.create_task(agent.run())

        async def both_listed():
            return sock.exists() and await _readers(sock) == ["a reader", "b reader"]
        await _until(both_listed)
        made[1].fail.set()
        with pytest.raises(AgentStopped, match="b: device gone"):
            await asyncio.wait_for(running, 15)

    asyncio.run(scenario())
    assert all(b.stopped for b in made)       # the other monitor was cancelled, not left running
    assert not sock.exists()                  # and the socket was removed


def test_stop_is_a_clean_shutdown_and_a_task_is_one_line(tmp_path):
    sock = tmp_path / "run" / "agent.sock"

    async def scenario():
        agent = await Agent.build(AgentConfig(socket=sock), backends=(TestBackend,))
        ticks: list[int] = []

        async def ticker():
            while True:
                ticks.append(1)
                await asyncio.sleep(0.01)
        agent.add_task("ticker", ticker)
        with pytest.raises(ValueError, match="already registered"):
            agent.add_task("ticker", ticker)
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        await _until(lambda: asyncio.sleep(0, result=bool(ticks) and sock.exists()))
        stop.set()
        await asyncio.wait_for(running, 15)     # no error: a stop is not a failure
        return len(ticks)

    n = asyncio.run(scenario())
    assert n > 0 and not sock.exists()


class RecordingUplink:
    """Stands in for the personalizer where this test needs none (no call is made): records closing."""

    def __init__(self):
        self.closed = False

    async def close(self):
        self.closed = True


def test_station_settings_and_the_one_uplink_reach_the_operations(tmp_path):
    shutil.copytree(EXAMPLES, tmp_path / "cfg")
    path = tmp_path / "cfg" / "station.toml"
    text = path.read_text().replace('data_dir = "/var/lib/cns-agent"', f'data_dir = "{tmp_path / "data"}"')
    path.write_text(text.replace("watch_timeout_seconds = 600", "watch_timeout_seconds = 7.5"))
    cfg = station_config.load(path)
    uplink = RecordingUplink()

    async def scenario():
        agent = await Agent.build(AgentConfig(socket=tmp_path / "run" / "agent.sock", station=cfg),
                                  backends=(TestBackend,), uplink=lambda station, operator: uplink)
        try:
            assert agent.task_names == ["local-api", "monitor:test", "recovery", "station-cert-renewal"]
            assert agent.ops.uplink is uplink and agent.ops.watch_timeout_s == 7.5
            async with agent.ops.uplink_session() as a, agent.ops.uplink_session() as b:
                assert a is b is uplink          # one uplink for the agent's life, not one per operation
            assert not uplink.closed
        finally:
            await agent.close()
        assert uplink.closed

    asyncio.run(scenario())
