"""The idle agent's footprint (issue 18 item 1: idle RSS < 60 MB with two readers and a card).

An agent that only watches readers and serves the local API must not carry what only device operations,
conformance runs, token image checks or self-updates use: cryptography (~16 MB resident), asn1crypto
(~8 MB), TUF and its HTTP stack (~27 MB), rich, the emulator. They are imported when such work starts.
Checked two ways: the modules a fresh interpreter holds after the CLI's parser and the composition root
are built (no hardware), and the libraries and RSS of a real ``cns-agent run`` beside a private pcscd
with two vpcd readers and an emulated card (``scripts/bench agent`` measures the same, over 60 s).
Both also as a station runs the agent: enrolled (``station.toml``, station key and certificate), device
operations on, the station certificate checked at start; its due check reads the certificate with
asn1crypto, and the operations' modules (cryptography) are imported when an operation runs."""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.agent.support import AgentUnderTest, Emulator, wait_for
from tests.packaging.conftest import ROOT

# what the idle agent must not hold; each is imported by the work that needs it
NOT_IDLE = ("cryptography", "asn1crypto", "tuf", "securesystemslib", "urllib3", "rich", "agent.conformance",
            "agent.ops.personalize", "agent.ops.renew", "agent.ops.lifecycle", "agent.updates.client",
            "firmware_profiles.emulator", "firmware_profiles.usbemu", "personalizer", "prometheus_client")
IDLE_RSS_MB = 60.0
# an enrolled station's agent holds asn1crypto (its station-certificate check at start), nothing else of these
NOT_IDLE_STATION = tuple(m for m in NOT_IDLE if m != "asn1crypto")

PROBE = r"""
import asyncio, json, sys, tempfile
from pathlib import Path
from agent.cli import build_parser
from agent.app import Agent, AgentConfig
build_parser()                    # `cns-agent run` builds every command group's parser first
d = Path(tempfile.mkdtemp())
agent = asyncio.run(Agent.build(AgentConfig(socket=d / "agent.sock", token_journal=d / "t.db",
                                            updates_dir=d / "u"), backends=()))
held = sorted(m for m in sys.modules if m.startswith(tuple(sys.argv[1].split(","))))
print(json.dumps(held))
"""


STATION_PROBE = r"""
import asyncio, json, sys, tempfile
from pathlib import Path
from agent.cli import build_parser
from agent.app import Agent, AgentConfig
from proto.cns.v1 import agent_pb2 as pb
import station_config
build_parser()
cfg = station_config.load(sys.argv[2])
d = Path(tempfile.mkdtemp())

async def main():
    agent = await Agent.build(AgentConfig(socket=d / "agent.sock", token_journal=d / "t.db", updates_dir=d / "u",
                                          station=cfg), backends=())
    assert agent.ops is not None and "station-cert-renewal" in agent.task_names, agent.task_names
    from agent.uplink import station_cert
    assert station_cert.check_and_renew(cfg) is None    # the check at start (a fresh certificate: not due)
    listed = await agent.operations.list_operations(pb.ListOperationsRequest(), None)   # `cns-agent operations`
    assert list(listed.operations) == []
    await agent.close()
asyncio.run(main())
held = sorted(m for m in sys.modules if m.startswith(tuple(sys.argv[1].split(","))))
print(json.dumps(held))
"""


def _held(prefixes: tuple[str, ...], station: Path | None = None) -> list[str]:
    argv = [sys.executable, "-c", PROBE, ",".join(prefixes)] if station is None else \
        [sys.executable, "-c", STATION_PROBE, ",".join(prefixes), str(station)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def station_toml(tmp_path_factory) -> Path:
    """A station's configuration with its key and certificate (the test deployment's demo station)."""
    from personalizer import deploy
    dep = deploy.init_deployment(tmp_path_factory.mktemp("idle") / "cns", listen="127.0.0.1:50999", ca_key_bits=2048)
    return dep.station_config


def test_parser_and_composition_root_import_no_operation_modules():
    held = _held(NOT_IDLE)
    assert held == [], f"the idle agent imports {held}: import them where the work that needs them starts"


def test_the_probe_sees_what_an_agent_with_operations_imports():
    # the check above can fail: the same probe does see a module the agent imports at build time
    assert "agent.devices.registry" in _held(("agent.devices.registry",))


def test_station_agent_imports_no_operation_modules_at_idle(station_toml):
    """With a station configuration: the journal, the uplink, recovery and the certificate check are
    built, and the check at start has run, yet no operation's module (nor cryptography) is loaded."""
    held = _held(NOT_IDLE_STATION, station_toml)
    assert held == [], f"the idle station agent imports {held}: import them where the work that needs them starts"


def test_station_ops_names_the_operations_kinds_without_importing_them():
    # StationOps tells a journaled personalization from a renewal by these names, not by the modules
    from agent.ops import personalize, renew, station
    assert (station.PERSONALIZE, station.RENEW) == (personalize.KIND, renew.KIND)


def test_the_station_probe_sees_the_station_modules(station_toml):
    # the check above can fail: the probe sees what the station agent does load (its check's parser too)
    held = _held(("agent.ops.station", "agent.uplink.station_cert", "asn1crypto.x509"), station_toml)
    assert held == ["agent.ops.station", "agent.uplink.station_cert", "asn1crypto.x509"]


def _mapped(pid: int) -> set[str]:
    return {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
            if len(line.split()) >= 6}


def _rss_mb(pid: int) -> float:
    import os
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.pcscd
def test_running_agent_with_two_readers_and_a_card_stays_small(pcscd):
    emu = Emulator(pcscd.env, "infocamere-cns-2048", pcscd.vpcd_address(0)).start()
    agent = AgentUnderTest(pcscd.env, None)
    try:
        agent.start()
        ready = agent.wait_reader("Virtual PCD 00 00", lambda r: (r.get("card") or {}).get("state") == "ready")
        assert ready["card"]["model_id"] == "infocamere-cns-2048"
        assert len(agent.devices()["readers"]) == 2
        libs = _mapped(agent.proc.pid)
        native = sorted(p for p in libs if "/cryptography/" in p or "_cffi_backend" in p)
        assert native == [], f"the idle agent mapped {native}"
        rss = _rss_mb(agent.proc.pid)
        assert rss < IDLE_RSS_MB, f"idle agent RSS {rss:.1f} MB (target < {IDLE_RSS_MB} MB)"
    finally:
        rc = agent.stop()
        emu.stop()
        agent.cleanup()
    assert rc == 0, agent.log_text()


def _cryptography_native(pid: int) -> list[str]:
    return sorted(p for p in _mapped(pid) if "/cryptography/" in p or "_cffi_backend" in p)


def test_the_maps_check_sees_cryptography_when_it_is_loaded():
    # the check below can fail: a process that imported cryptography maps its native module
    proc = subprocess.Popen([sys.executable, "-c", "import cryptography.x509, sys; print('up', flush=True); "
                             "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        assert any(p.endswith("_rust.abi3.so") for p in _cryptography_native(proc.pid))
    finally:
        proc.communicate("")


@pytest.mark.pcscd
def test_enrolled_agent_with_two_readers_and_a_card_holds_no_cryptography(pcscd, tmp_path):
    """As ``scripts/bench agent`` starts it: enrolled with a running personalizer (one-time code, station
    key, certificate), ``cns-agent run --config station.toml``, two readers, a card in one."""
    from benchmarks.agent import _enroll_stations
    emu = Emulator(pcscd.env, "infocamere-cns-2048", pcscd.vpcd_address(0)).start()
    agent = AgentUnderTest(pcscd.env, None)
    with contextlib.ExitStack() as stack:
        try:
            config = _enroll_stations(tmp_path, {"venv": str(Path(sys.executable).parent / "cns-agent")},
                                      agent.env, stack)["venv"]
            agent.start("--config", str(config))
            ready = agent.wait_reader("Virtual PCD 00 00", lambda r: (r.get("card") or {}).get("state") == "ready")
            assert ready["card"]["model_id"] == "infocamere-cns-2048"
            assert len(agent.devices()["readers"]) == 2
            assert "device operations enabled" in agent.log_text()
            wait_for(lambda: "station certificate valid until" in agent.log_text(), 15,
                     lambda: f"the station certificate was not checked at start: {agent.log_text()}")
            time.sleep(0.5)
            assert agent.proc.poll() is None, agent.log_text()
            native = _cryptography_native(agent.proc.pid)
            assert native == [], f"the idle enrolled agent mapped {native}"
            rss = _rss_mb(agent.proc.pid)
            assert rss < IDLE_RSS_MB, f"idle enrolled agent RSS {rss:.1f} MB (target < {IDLE_RSS_MB} MB)"
        finally:
            rc = agent.stop()
            emu.stop()
            agent.cleanup()
    assert rc == 0, agent.log_text()
