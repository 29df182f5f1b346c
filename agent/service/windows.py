"""The agent as a per-user logon task on Windows (Task Scheduler XML).

``render_task`` is a Task Scheduler 1.2 task (schema ``http://schemas.microsoft.com/windows/2004/
02/mit/task``): a LogonTrigger for this user only, the user's interactive token at least
privilege (no admin, no stored password), one instance, no time limit, restarted on failure.
It is written to ``%LOCALAPPDATA%\\cns-agent\\cns-agent-task.xml`` and registered with
``schtasks /Create /XML`` (``schtasks_args``). (Where policy forbids users to create tasks, an
``HKCU\\...\\CurrentVersion\\Run`` value with the same command line would do; not written by us
yet.) Standard library only.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from xml.etree import ElementTree as ET

from agent.service import ServiceSpec, home
from agent.service.files import MARKER

TASK_NS = "http://schemas.microsoft.com/windows/2004/02/mit/task"
TASK_NAME = "CNS agent"


def task_path(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    local = env.get("LOCALAPPDATA")
    base = Path(local) if local else home(env) / "AppData" / "Local"
    return base / "cns-agent" / "cns-agent-task.xml"


def user_id(env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    user = env.get("USERNAME") or env.get("USER") or "user"
    domain = env.get("USERDOMAIN")
    return f"{domain}\\{user}" if domain else user


def _args(argv) -> str:
    return subprocess.list2cmdline(list(argv))     # the quoting CreateProcess undoes


def render_task(spec: ServiceSpec, env: dict[str, str] | None = None) -> bytes:
    ET.register_namespace("", TASK_NS)

    def el(parent, tag, text=None, **attrs):
        e = ET.SubElement(parent, f"{{{TASK_NS}}}{tag}", attrs)
        if text is not None:
            e.text = text
        return e

    uid = user_id(env)
    task = ET.Element(f"{{{TASK_NS}}}Task", {"version": "1.2"})
    reg = el(task, "RegistrationInfo")
    el(reg, "Author", uid)
    el(reg, "Description", f"{MARKER}: the CNS workstation agent of this user")
    el(reg, "URI", f"\\{TASK_NAME}")
    trig = el(el(task, "Triggers"), "LogonTrigger")
    el(trig, "Enabled", "true")
    el(trig, "UserId", uid)
    pr = el(el(task, "Principals"), "Principal", id="Author")
    el(pr, "UserId", uid)
    el(pr, "LogonType", "InteractiveToken")
    el(pr, "RunLevel", "LeastPrivilege")
    st = el(task, "Settings")
    el(st, "MultipleInstancesPolicy", "IgnoreNew")
    el(st, "DisallowStartIfOnBatteries", "false")
    el(st, "StopIfGoingOnBatteries", "false")
    el(st, "AllowHardTerminate", "true")
    el(st, "StartWhenAvailable", "true")
    el(st, "RunOnlyIfNetworkAvailable", "false")
    idle = el(st, "IdleSettings")
    el(idle, "StopOnIdleEnd", "false")
    el(idle, "RestartOnIdle", "false")
    el(st, "AllowStartOnDemand", "true")
    el(st, "Enabled", "true")
    el(st, "Hidden", "false")
    el(st, "RunOnlyIfIdle", "false")
    el(st, "WakeToRun", "false")
    el(st, "ExecutionTimeLimit", "PT0S")
    el(st, "Priority", "7")
    rf = el(st, "RestartOnFailure")
    el(rf, "Interval", "PT1M")
    el(rf, "Count", "5")
    act = el(el(task, "Actions", Context="Author"), "Exec")
    el(act, "Command", spec.argv[0])
    if len(spec.argv) > 1:
        el(act, "Arguments", _args(spec.argv[1:]))
    # schtasks reads the encoding the declaration names; UTF-16 is what it writes itself
    return ET.tostring(task, encoding="utf-16", xml_declaration=True)


def schtasks_args(action: str, env: dict[str, str] | None = None) -> list[str]:
    if action == "create":
        return ["schtasks", "/Create", "/TN", TASK_NAME, "/XML", str(task_path(env))]
    return ["schtasks", "/Delete", "/TN", TASK_NAME, "/F"]
