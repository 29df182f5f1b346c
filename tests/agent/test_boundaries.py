"""Running the agent's code loads neither the emulator nor the personalizer.

The static rules (no import of the emulator or the personalizer, pyscard only in
``agent.devices``, ``agent.card`` free of pyscard/grpc/firmware_profiles) are
import-linter contracts in pyproject.toml, checked by tests/test_layers.py. This
test checks what a static check cannot see: the modules actually loaded at run time.
"""
from __future__ import annotations

import subprocess
import sys


def test_running_the_agent_code_loads_no_emulator():
    code = ("import sys, agent.cli, agent.commands.run, agent.commands.devices, agent.devices, agent.api.server;"
            "from agent.devices import Catalog; Catalog.load().identify(b'\\x3b\\x00');"
            "bad = [m for m in sys.modules if m.startswith(('firmware_profiles.emulator', 'personalizer'))];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
