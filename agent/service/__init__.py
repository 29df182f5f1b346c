"""The agent as a per-user service: what starts ``cns-agent run`` at logon, for this user only.

One writer per platform renders the file the platform's per-user service manager reads:
``systemd`` (a ``systemd --user`` unit), ``launchd`` (a LaunchAgent plist), ``windows`` (a Task
Scheduler logon task as XML, or the ``HKCU\\...\\Run`` value). ``files`` installs such a file
atomically under the user's home and refuses to overwrite one it did not write. Nothing here needs
admin rights, and every path is under the user's home (``XDG_CONFIG_HOME``, ``~/Library``,
``%LOCALAPPDATA%``). Imports only the standard library; the command is ``agent.commands.service``.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

SERVICE_NAME = "cns-agent"
LABEL = "it.camcom.cns-agent"          # launchd label / task name: reverse-DNS, one per user


class ServiceError(Exception):
    """A service file cannot be written, removed or read; the message says what to do."""


@dataclass(frozen=True)
class ServiceSpec:
    """What the service runs: an absolute program and its arguments (``run`` and options)."""

    argv: tuple[str, ...]
    environment: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.argv or not os.path.isabs(self.argv[0]):
            raise ServiceError(f"the service must start an absolute program path, not {self.argv[:1]}")
        for a in self.argv:
            if "\n" in a or "\0" in a:
                raise ServiceError("a service argument cannot contain a newline or NUL")


def home(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    h = env.get("HOME") or env.get("USERPROFILE")
    return Path(h) if h else Path.home()


def current_program() -> list[str]:
    """How this agent was started, as the argv prefix a service should use: the one-file binary
    itself, else the ``cns-agent`` console script beside this interpreter, else ``python -m``."""
    if getattr(sys, "frozen", False):
        return [os.path.abspath(sys.executable)]
    script = Path(sys.executable).parent / ("cns-agent.exe" if os.name == "nt" else "cns-agent")
    if script.exists():
        return [str(script)]
    return [os.path.abspath(sys.executable), "-m", "agent.cli"]
