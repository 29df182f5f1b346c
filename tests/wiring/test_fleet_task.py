"""Item 2 of the wiring task (issue 15 item 1): with ``[fleet]`` enabled in the station config, the fleet
stream is a supervised task of ``Agent.build``; the personalizer's inventory then shows the agent's
readers over real mTLS. Without the section (or ``enabled = false``) there is no such task."""
from __future__ import annotations

import asyncio

import pytest

import station_config
from agent.app import AgentConfig
from proto.cns.v1 import fleet_pb2 as pb, fleet_pb2_grpc
from tests.agent.test_app import RecordingUplink, TestBackend
from tests.fleet import support
from tests.fleet.conftest import deployment  # noqa: F401  (session fixture)
from tests.wiring.conftest import RunningAgent

STATION = "urn:cns:station:RM:RM-ST-1"


def _with(cfg: station_config.StationConfig, extra: str) -> station_config.StationConfig:
    cfg.source.write_text(cfg.source.read_text() + extra)
    return station_config.load(cfg.source)


def _build(cfg, sock):
    return RunningAgent.build_only(AgentConfig(socket=sock, station=cfg, version="9.1"), (TestBackend,),
                                   uplink=lambda station, operator: RecordingUplink())


def test_fleet_section_validated():
    from station_config import FleetSection
    assert FleetSection().enabled and FleetSection().max_backoff_seconds == 120.0


@pytest.mark.parametrize("extra, message", [
    ("\n[fleet]\nenabled = 1\n", "fleet.enabled: expected bool"),
    ("\n[fleet]\nmax_backoff_seconds = 0\n", "fleet.max_backoff_seconds: expected a positive number"),
    ("\n[fleet]\nenable = true\n", "fleet.enable: unknown key"),
])
def test_a_bad_fleet_section_names_the_key(deployment, tmp_path, extra, message):  # noqa: F811
    cfg = support.station(deployment, tmp_path / "st", 1)
    with pytest.raises(station_config.StationConfigError, match=message):
        _with(cfg, extra)


def test_fleet_disabled_or_absent_means_no_fleet_task(deployment, tmp_path):  # noqa: F811
    cfg = support.station(deployment, tmp_path / "st", 1)
    assert cfg.fleet is None
    assert "fleet" not in _build(cfg, tmp_path / "a.sock")
    off = _with(cfg, "\n[fleet]\nenabled = false\n")
    assert "fleet" not in _build(off, tmp_path / "b.sock")


def test_enabled_fleet_is_a_supervised_task_reporting_the_registry(deployment, tmp_path):  # noqa: F811
    async def server_and_agent():
        async with support.fleet_server(deployment, tmp_path / "db.sqlite") as (port, fleet):
            cfg = _with(support.station(deployment, tmp_path / "st", port), "\n[fleet]\nmax_backoff_seconds = 2\n")
            assert cfg.fleet.enabled and cfg.fleet.max_backoff_seconds == 2.0
            running = RunningAgent(AgentConfig(socket=tmp_path / "run" / "agent.sock", station=cfg, version="9.1"),
                                   (TestBackend,), uplink=lambda station, operator: RecordingUplink())
            await asyncio.to_thread(running.start)
            try:
                assert "fleet" in running.agent.task_names
                await support.until(lambda: fleet.hub.is_connected(STATION), what="the agent's fleet stream")
                ch = support.aio_channel(deployment, port, support.admin_cert(deployment))
                admin = fleet_pb2_grpc.FleetAdminStub(ch)

                async def listed():
                    st = (await admin.ListStations(pb.FleetInventoryQuery(chamber="RM"))).stations
                    return st and list(st[0].readers) == ["test reader"] and st[0].agent_version == "9.1"
                await support.until(listed, what="the station's readers in the inventory")
                await ch.close()
            finally:
                await asyncio.to_thread(running.stop)
    asyncio.run(asyncio.wait_for(server_and_agent(), 60))
