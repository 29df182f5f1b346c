"""``cns-agent service install|uninstall|status``: start the agent at logon, for this user, no admin.

Picks the platform's writer in ``agent.service`` (systemd --user on Linux, a LaunchAgent on macOS,
a logon task on Windows), installs its file under the user's home (``agent.service.files``:
atomic, an existing different file refused unless ``--replace``) and asks the per-user service
manager to start it, when this session has one; else it says the file is in place and how to
start it. ``--platform`` renders another platform's file (central IT preparing images; tests).
Errors are one line (``CommandError``) and leave the previous state as it was. ``agent.service``
is imported when the command runs, not when the parser is built: every agent start builds the
parser, and the writers (plistlib, ElementTree) would add ~1.8 MB to the idle agent's RSS.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from agent.commands import CommandError

PLATFORMS = ("linux", "macos", "windows")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("service", help="install, remove or show the per-user service that starts the agent at logon")
    p.add_argument("action", choices=["install", "uninstall", "status"])
    p.add_argument("--config", type=Path, default=None, help="station configuration the service's agent runs with")
    p.add_argument("--profiles", type=Path, default=None, help="card profile directory for the service's agent")
    p.add_argument("--replace", action="store_true", help="overwrite a service file that has other contents")
    p.add_argument("--no-start", action="store_true", help="write the file only; do not (re)start the service")
    p.add_argument("--platform", choices=PLATFORMS, default=None, help="default: this machine's")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=service)


def _this_platform() -> str:
    return {"darwin": "macos", "win32": "windows"}.get(sys.platform, "linux")


def _spec(args):
    from agent.service import ServiceSpec, current_program

    argv = current_program() + ["run"]
    for opt, val in (("--config", args.config), ("--profiles", args.profiles)):
        if val is not None:
            path = val.expanduser().resolve()
            if not path.exists():
                raise CommandError(f"{opt} {val}: no such file or directory; give the path the service should use")
            argv += [opt, str(path)]
    return ServiceSpec(tuple(argv))


def _target(platform: str) -> Path:
    from agent.service import launchd, systemd, windows

    if platform == "linux":
        return systemd.unit_path()
    if platform == "macos":
        return launchd.plist_path()
    return windows.task_path()


def _render(platform: str, spec) -> bytes:
    from agent.service import launchd, systemd, windows

    if platform == "linux":
        return systemd.render(spec).encode()
    if platform == "macos":
        return launchd.render(spec)
    return windows.render_task(spec)


def _manager(platform: str, action: str) -> str:
    """Tell the per-user service manager; returns what happened, in words."""
    from agent.service import ServiceError, launchd, systemd, windows

    native = platform == _this_platform()
    if platform == "linux":
        steps = {"install": [("daemon-reload",), ("enable", "--now", systemd.UNIT_NAME)],
                 "uninstall": [("disable", "--now", systemd.UNIT_NAME)]}[action]
        if not native or not systemd.has_user_manager():
            return ("no systemd --user manager in this session: start it at the next login, or now with "
                    f"`systemctl --user enable --now {systemd.UNIT_NAME}`") if action == "install" else "not running"
        for st in steps:
            r = systemd.systemctl(*st)
            if r is not None and r.returncode != 0:
                raise ServiceError(f"systemctl --user {' '.join(st)} failed: {(r.stderr or r.stdout).strip()}")
        if action == "uninstall":
            systemd.systemctl("daemon-reload")
        return "started" if action == "install" else "stopped"
    if not native:
        return "not started (another platform's file)"
    if platform == "macos":
        cmd = launchd.launchctl_args("bootstrap" if action == "install" else "bootout")
    else:
        cmd = windows.schtasks_args("create" if action == "install" else "delete")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise ServiceError(f"{' '.join(cmd[:2])} failed: {(r.stderr or r.stdout).strip()}")
    return "registered" if action == "install" else "unregistered"


def _status(platform: str, path: Path) -> dict:
    from agent.service import systemd

    out = {"platform": platform, "file": str(path), "installed": path.exists(), "active": None}
    if platform == "linux" and platform == _this_platform():
        r = systemd.systemctl("is-active", systemd.UNIT_NAME)
        if r is not None:
            out["active"] = r.stdout.strip() or "unknown"
    return out


def service(args: argparse.Namespace) -> int:
    from agent.service import ServiceError, files

    platform = args.platform or _this_platform()
    path = _target(platform)
    try:
        if args.action == "install":
            content = _render(platform, _spec(args))
            previous = path.read_bytes() if path.exists() else None
            done = files.install_file(path, content, replace=args.replace)
            try:
                started = "not started (--no-start)" if args.no_start else _manager(platform, "install")
            except ServiceError as exc:   # the manager refused it: put back what was there
                if done != "unchanged":
                    if previous is None:
                        path.unlink(missing_ok=True)
                    else:
                        files.install_file(path, previous, replace=True)
                raise ServiceError(f"{exc}; {'the previous file was put back' if previous else 'no file left'}"
                                   f" at {path}") from exc
            result = {"action": "install", "file": str(path), "file_state": done, "service": started}
        elif args.action == "uninstall":
            stopped = "not stopped (--no-start)" if args.no_start or not path.exists() else _manager(platform, "uninstall")
            removed = files.remove_file(path)
            result = {"action": "uninstall", "file": str(path), "removed": removed, "service": stopped}
        else:
            result = _status(platform, path)
    except ServiceError as exc:
        raise CommandError(str(exc)) from exc
    if args.json:
        print(json.dumps(result))
    elif args.action == "install":
        print(f"service file {result['file_state']}: {path}; {result['service']}")
    elif args.action == "uninstall":
        print(f"{'removed' if result['removed'] else 'no service file at'} {path}; {result['service']}")
    else:
        print(f"{path}: {'installed' if result['installed'] else 'not installed'}"
              + (f", {result['active']}" if result["active"] else ""))
    return 0
