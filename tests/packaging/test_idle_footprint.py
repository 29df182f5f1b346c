"""The idle agent's footprint (issue 18 item 1: idle RSS < 60 MB with two readers and a card).

An agent that only watches readers and serves the local API must not carry what only device operations,
conformance runs, token image checks or self-updates use: cryptography (~16 MB resident), asn1crypto
(~8 MB), TUF and its HTTP stack (~27 MB), rich, the emulator. They are imported when such work starts.
Checked two ways: the modules a fresh interpreter holds after the CLI's parser and the composition root
are built (no hardware), and the libraries and RSS of a real ``cns-agent run`` beside a private pcscd
with two vpcd readers and an emulated card (``scripts/bench agent`` measures the same, over 60 s)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent.support import AgentUnderTest, Emulator
from tests.packaging.conftest import ROOT

# what the idle agent must not hold; each is imported by the work that needs it
NOT_IDLE = ("cryptography", "asn1crypto", "tuf", "securesystemslib", "urllib3", "rich", "agent.conformance",
            "agent.ops.personalize", "agent.ops.renew", "agent.ops.lifecycle", "agent.updates.client",
            "firmware_profiles.emulator", "firmware_profiles.usbemu", "personalizer", "prometheus_client")
IDLE_RSS_MB = 60.0

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


def _held(prefixes: tuple[str, ...]) -> list[str]:
    r = subprocess.run([sys.executable, "-c", PROBE, ",".join(prefixes)], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_parser_and_composition_root_import_no_operation_modules():
    held = _held(NOT_IDLE)
    assert held == [], f"the idle agent imports {held}: import them where the work that needs them starts"


def test_the_probe_sees_what_an_agent_with_operations_imports():
    # the check above can fail: the same probe does see a module the agent imports at build time
    assert "agent.devices.registry" in _held(("agent.devices.registry",))


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
