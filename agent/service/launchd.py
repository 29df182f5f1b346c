"""The agent as a per-user LaunchAgent on macOS: ``~/Library/LaunchAgents/it.camcom.cns-agent.plist``.

``render`` builds the plist with ``plistlib`` (RunAtLoad; restarted when it exits with an error;
logs under ``~/Library/Logs``). ``launchctl`` (``bootstrap``/``bootout`` in the ``gui/<uid>``
domain) is run only on macOS. Per user, no admin: /Library/LaunchAgents is never used.
Standard library only.
"""
from __future__ import annotations

import os
import plistlib
from pathlib import Path

from agent.service import LABEL, ServiceSpec, home
from agent.service.files import MARKER


def plist_path(env: dict[str, str] | None = None) -> Path:
    return home(env) / "Library" / "LaunchAgents" / f"{LABEL}.plist"


def render(spec: ServiceSpec, env: dict[str, str] | None = None) -> bytes:
    logs = home(env) / "Library" / "Logs" / "cns-agent.log"
    doc = {
        "Label": LABEL,
        "Comment": f"{MARKER}: the CNS workstation agent of this user",
        "ProgramArguments": list(spec.argv),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 5,
        "ProcessType": "Interactive",
        "LimitLoadToSessionType": "Aqua",      # a GUI login session: one agent per logged-in user
        "StandardOutPath": str(logs),
        "StandardErrorPath": str(logs),
        "Umask": 0o077,
    }
    if spec.environment:
        doc["EnvironmentVariables"] = dict(spec.environment)
    return plistlib.dumps(doc, fmt=plistlib.FMT_XML, sort_keys=True)


def launchctl_args(action: str, env: dict[str, str] | None = None) -> list[str]:
    """``launchctl bootstrap|bootout gui/<uid> <plist>``: the per-user domain, no sudo."""
    return ["launchctl", action, f"gui/{os.getuid()}", str(plist_path(env))]
