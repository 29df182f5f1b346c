"""Item 5 of the wiring task (issue 18 item 5): with ``[updates]`` in the station config, ``Agent.build`` runs
the periodic self-update as the supervised task ``self-update``: at start it installs a newer published build
(TUF repository served by a real nginx) and stops the agent so the service starts it on the new build
(``cns-agent run`` exits 75); a build that fails its health check is rolled back and the agent keeps running."""
from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

import station_config
from agent.app import Agent, AgentConfig, AgentStopped, AgentUpdated
from agent.updates.client import trust_root
from agent.updates.selfupdate import SelfUpdater, this_platform
from tests.agent.test_app import RecordingUplink, TestBackend
from tests.releases.conftest import served  # noqa: F401  (fixture)
from tests.releases.test_selfupdate import stand_in

EXAMPLES = Path(station_config.__file__).parent / "examples"


def _config(tmp_path, url: str | None) -> station_config.StationConfig:
    shutil.copytree(EXAMPLES, tmp_path / "cfg")
    path = tmp_path / "cfg" / "station.toml"
    text = path.read_text().replace('data_dir = "/var/lib/cns-agent"', f'data_dir = "{tmp_path / "data"}"')
    text = text.replace('role = "station"', 'role = "operator-tool"')   # no certificate renewal in this test
    if url:
        text += f'\n[updates]\nurl = "{url}"\n'
    path.write_text(text)
    return station_config.load(path)


@pytest.fixture
def rig(tmp_path, served):  # noqa: F811
    root = tmp_path / "agent-updates"
    trust_root(root / "updates", served.first_root())
    up = SelfUpdater(root / "install", None, this_platform())
    up.install_first(stand_in(tmp_path, "0.1.0"), "0.1.0")

    def publish(version, **kw):
        served.repo.add_agent(stand_in(tmp_path, version, **kw), version, this_platform())
        served.repo.sign(served.offline)
        served.repo.publish(served.online)

    cfg = AgentConfig(socket=tmp_path / "run" / "agent.sock", station=_config(tmp_path, served.url),
                      updates_dir=root, token_journal=tmp_path / "tokens.db", update_interval_s=0.5)
    return cfg, up, publish


def _build(cfg):
    return Agent.build(cfg, backends=(TestBackend,), uplink=lambda station, operator: RecordingUplink())


def test_no_updates_section_no_self_update_task(tmp_path):
    cfg = AgentConfig(socket=tmp_path / "a.sock", station=_config(tmp_path, None))

    async def go():
        agent = await _build(cfg)
        await agent.close()
        return agent.task_names
    assert "self-update" not in asyncio.run(go())


def test_a_newer_build_is_installed_at_start_and_stops_the_agent(rig):
    cfg, up, publish = rig
    publish("0.2.0")

    async def go():
        agent = await _build(cfg)
        assert "self-update" in agent.task_names
        with pytest.raises(AgentStopped) as stopped:
            await asyncio.wait_for(agent.run(), 60)
        return stopped.value
    exc = asyncio.run(go())
    assert isinstance(exc.__cause__, AgentUpdated) and exc.__cause__.version == "0.2.0"
    assert up.current_version() == "0.2.0"
    assert not cfg.socket.exists()


def test_a_crashing_build_is_rolled_back_and_the_agent_keeps_running(rig):
    cfg, up, publish = rig
    publish("0.3.0", crash=True)

    async def go():
        agent = await _build(cfg)
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        deadline = asyncio.get_running_loop().time() + 30
        while "0.3.0" not in up.bad_versions():
            assert asyncio.get_running_loop().time() < deadline, "the bad build was never tried"
            assert not running.done(), running
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.2)                 # two more periodic checks: the bad build is not retried
        assert not running.done()
        stop.set()
        await asyncio.wait_for(running, 15)
    asyncio.run(go())
    assert up.current_version() == "0.1.0"


def test_cns_agent_run_exits_75_after_an_update(rig, monkeypatch, capsys):
    cfg, up, publish = rig
    publish("0.2.0")
    from agent import cli
    from agent.commands import run as run_cmd

    real_build = Agent.build

    async def build(agent_cfg, **kw):   # the command's own config, with this test's folders and backend
        agent_cfg = AgentConfig(socket=agent_cfg.socket, station=agent_cfg.station, updates_dir=cfg.updates_dir,
                                token_journal=cfg.token_journal, update_interval_s=0.5)
        return await real_build(agent_cfg, backends=(TestBackend,), uplink=lambda s, o: RecordingUplink())
    monkeypatch.setattr(run_cmd.Agent, "build", build)
    rc = cli.main(["run", "--config", str(cfg.station.source), "--socket", str(cfg.socket)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 75
    assert err[-1].startswith("cns-agent run: agent updated to 0.2.0") and "restarts the agent" in err[-1]
    assert up.current_version() == "0.2.0"
