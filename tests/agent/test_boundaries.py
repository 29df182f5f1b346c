"""The agent's production code never imports the emulator, the personalizer, or (outside
``agent.devices.pcsc``/``monitor``) pyscard."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

AGENT = Path(__file__).resolve().parents[2] / "agent"
MINE = ["card", "devices", "api", "commands", "cli.py", "__init__.py"]


def _sources():
    for entry in MINE:
        path = AGENT / entry
        yield from ([path] if path.is_file() else sorted(path.rglob("*.py")))


def test_no_forbidden_imports_in_source():
    for src in _sources():
        text = src.read_text()
        assert not re.search(r"^\s*(from|import)\s+(firmware_profiles\.emulator|personalizer)\b", text, re.M), src
        if src.parent.name == "card":
            assert not re.search(r"^\s*(from|import)\s+(smartcard|grpc|firmware_profiles)\b", text, re.M), src


def test_running_the_agent_code_loads_no_emulator():
    code = ("import sys, agent.cli, agent.commands.run, agent.commands.devices, agent.devices, agent.api.server;"
            "from agent.devices import Catalog; Catalog.load().identify(b'\\x3b\\x00');"
            "bad = [m for m in sys.modules if m.startswith(('firmware_profiles.emulator', 'personalizer'))];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
