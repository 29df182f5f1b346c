"""The agent as a ``systemd --user`` unit: ``$XDG_CONFIG_HOME/systemd/user/cns-agent.service``.

``render`` writes the unit (ExecStart quoted for systemd: ``%`` and ``$`` escaped, each argument
in double quotes); ``unit_path`` says where it goes (``~/.config`` when XDG_CONFIG_HOME is unset or
not absolute). ``systemctl`` runs ``systemctl --user`` when this session has a user manager
(``$XDG_RUNTIME_DIR/systemd/private`` exists) and returns None otherwise, so an install on a host
without one still writes the unit and says how to start it. The unit is per user: one agent per
login session's user manager, its socket in that user's ``$XDG_RUNTIME_DIR`` (VDI: never
machine-wide). Standard library only.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from agent.service import SERVICE_NAME, ServiceSpec, home
from agent.service.files import MARKER

UNIT_NAME = f"{SERVICE_NAME}.service"


def unit_path(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    cfg = env.get("XDG_CONFIG_HOME")
    base = Path(cfg) if cfg and os.path.isabs(cfg) else home(env) / ".config"
    return base / "systemd" / "user" / UNIT_NAME


def _quote(arg: str) -> str:
    """One ExecStart argument: specifiers (%) and variables ($) kept literal, quotes escaped."""
    a = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{a}"'


def render(spec: ServiceSpec) -> str:
    env_lines = "".join(f"Environment={_quote(f'{k}={v}')}\n" for k, v in sorted(spec.environment.items()))
    return (
        f"# {MARKER}: the CNS workstation agent of this user (remove with `cns-agent service uninstall`)\n"
        "[Unit]\n"
        "Description=CNS workstation agent (smart-card readers and cards of this session)\n"
        "StartLimitIntervalSec=300\n"
        "StartLimitBurst=5\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={' '.join(_quote(a) for a in spec.argv)}\n"
        f"{env_lines}"
        "Restart=on-failure\n"
        "RestartSec=5\n"
        "UMask=0077\n"
        "NoNewPrivileges=yes\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


def has_user_manager(env: dict[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    rt = env.get("XDG_RUNTIME_DIR")
    return bool(rt) and os.path.exists(os.path.join(rt, "systemd", "private"))


def systemctl(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess | None:
    """``systemctl --user ARGS`` against this session's user manager, or None when there is none."""
    if not has_user_manager(env):
        return None
    return subprocess.run(["systemctl", "--user", *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ if env is None else env))
