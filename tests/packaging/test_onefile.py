"""The one-file ``cns-agent`` (scripts/build-agent): built from the hashed lock, self-contained, and
doing the whole job: a blank emulated card personalized end to end by the binary alone (no venv on
its path) through a private pcscd + vpcd and the personalizer, then read and signed through OpenSC."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_profiles.emulator.pcscd import missing_tools
from tests.conftest import require
from tests.packaging.conftest import ROOT, build_agent

LOCKS = sorted((ROOT / "packaging").glob("agent-*.lock"))


def _requirements(lock: Path) -> dict[str, list[str]]:
    """name==version -> its hashes, from a pip/uv hashed requirements file."""
    out, current = {}, None
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line)
        if m:
            current = f"{m.group(1).lower()}=={m.group(2)}"
            out[current] = []
        for h in re.findall(r"--hash=sha256:([0-9a-f]{64})", line):
            out[current].append(h)
    return out


def test_every_platform_lock_pins_every_package_with_hashes():
    wanted = {re.split(r"[<>=!~ ]", ln.strip())[0].lower()
              for ln in (ROOT / "packaging" / "agent-requirements.in").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")}
    assert {p.stem for p in LOCKS} == {"agent-linux", "agent-windows", "agent-macos"}
    for lock in LOCKS:
        reqs = _requirements(lock)
        assert reqs, lock
        assert all(hashes for hashes in reqs.values()), [r for r, h in reqs.items() if not h]
        assert wanted <= {r.split("==")[0] for r in reqs}, (lock.name, wanted - {r.split("==")[0] for r in reqs})
    # the build venv gets the lock and nothing else: no matplotlib or reportlab (personalizer-only)
    linux = _requirements(ROOT / "packaging" / "agent-linux.lock")
    assert not any(r.startswith(("matplotlib", "reportlab")) for r in linux)


def _env_without_venv() -> dict:
    """The binary must not lean on the venv the tests run in."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = "/usr/bin:/bin"
    return env


def test_binary_says_its_version(agent_binary, tmp_path):
    from importlib import metadata

    r = subprocess.run([str(agent_binary), "--version"], capture_output=True, text=True, timeout=60,
                       env=_env_without_venv(), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"cns-agent {metadata.version('cns-devices')}"


def test_binary_holds_the_agent_and_its_models_but_not_the_emulator_or_the_personalizer(agent_binary):
    viewer = ROOT / "build" / "agent-venv" / "bin" / "pyi-archive_viewer"
    require([] if viewer.exists() else ["the build venv (scripts/build-agent makes it)"])
    r = subprocess.run([str(viewer), "-r", "-b", str(agent_binary)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    names = {ln.strip() for ln in r.stdout.splitlines()}
    for needed in ("agent.commands.service", "agent.commands.personalize", "agent.devices.pcsc",
                   "proto.cns.v1.agent_pb2", "cns_spec", "station_config",
                   "firmware_profiles/cards/infocamere-cns-2048.toml", "firmware_profiles/cards/oberthur-cns-1024.toml",
                   "smartcard/scard/_scard.cpython-311-x86_64-linux-gnu.so",
                   "grpc/_cython/cygrpc.cpython-311-x86_64-linux-gnu.so", "cns_devices-0.1.0.dist-info/METADATA"):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(("firmware_profiles.emulator", "personalizer", "matplotlib",
                                                    "reportlab", "pytest"))]


@pytest.mark.pcscd
@pytest.mark.opensc
def test_binary_personalizes_a_blank_card_end_to_end(agent_binary, opensc_tools, tmp_path):
    """scripts/demo.py with --agent: `run`, `devices` and `personalize` are all the one-file binary."""
    require(missing_tools())
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--agent", str(agent_binary), "--json",
                        "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 0 and report["ok"], report.get("error") or r.stderr[-2000:]
    assert report["personalization"]["state"] == "done" and report["personalization"]["test_signatures"]
    assert report["opensc_token_label"] == "MARIO ROSSI"
    assert sorted(report["opensc_signatures_verified"]) == ["CNS0", "CNS1"]


@pytest.mark.slow
def test_two_builds_from_the_lock_are_byte_identical(agent_binary, tmp_path):
    again = build_agent(tmp_path / "again")
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(again) == digest(agent_binary)
