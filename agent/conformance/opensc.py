"""OpenSC's view of a card: ``opensc-tool --reader R --name`` must answer "CNS card" (the itacns driver).

``probe(reader) -> (status, detail)`` for ``checks.run``. The tool opens the card in shared mode while
the agent keeps its own connection (as ``agent.ops.p11check`` does). Imports the standard library only.
"""
from __future__ import annotations

import os
import shutil
import subprocess

TOOL = os.environ.get("CNS_AGENT_OPENSC_TOOL", "opensc-tool")
TIMEOUT_S = 30
CNS_NAME = "CNS card"


def probe(reader: str) -> tuple[str, str]:
    exe = shutil.which(TOOL)
    if exe is None:
        return "not run", f"{TOOL} is not installed (apt-get install opensc)"
    try:
        out = subprocess.run([exe, "--reader", reader, "--name"], capture_output=True, text=True,
                             timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return "fail", f"{TOOL} did not answer within {TIMEOUT_S} s"
    name = (out.stdout.strip().splitlines() or [""])[-1].strip()
    if out.returncode == 0 and name == CNS_NAME:
        return "pass", f"OpenSC names the card {name!r} (itacns driver)"
    why = name or (out.stderr.strip().splitlines() or ["no output"])[-1].strip()
    return "fail", f"OpenSC does not read the card as a CNS: {why[:200]}"
