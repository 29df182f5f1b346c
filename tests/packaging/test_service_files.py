"""``cns-agent service install|uninstall|status`` as a user without admin runs it.

Each test runs the console script with a fresh HOME (and no XDG_CONFIG_HOME / XDG_RUNTIME_DIR of
the session running the tests), so the files it writes are the only ones under the test's folder:
the tests assert nothing lands outside that home. The systemd unit is checked by Debian's
``systemd-analyze verify``; the LaunchAgent by ``plistlib``; the Windows logon task by parsing its
XML against the Task Scheduler 1.2 schema's element names and order.
"""
from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from tests.cli.conftest import one_line_error
from tests.conftest import require

BIN = Path(sys.executable).parent
AGENT = str(BIN / "cns-agent")
TASK_NS = "{http://schemas.microsoft.com/windows/2004/02/mit/task}"


def _env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("XDG_CONFIG_HOME", "XDG_RUNTIME_DIR", "LOCALAPPDATA", "USERPROFILE")}
    env.update(HOME=str(home), **extra)
    return env


def service(home: Path, *args: str, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([AGENT, "service", *args], capture_output=True, text=True, env=_env(home, **extra),
                          timeout=60)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _verify(unit: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    require([] if shutil.which("systemd-analyze") else ["systemd-analyze (apt-get install systemd)"])
    rt = tmp_path / "verify-rt"
    rt.mkdir(mode=0o700, exist_ok=True)
    return subprocess.run(["systemd-analyze", "verify", "--user", str(unit)], capture_output=True, text=True,
                          env={**os.environ, "XDG_RUNTIME_DIR": str(rt)}, timeout=60)


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home" / "mario"
    h.mkdir(parents=True)
    return h


def test_linux_install_writes_a_user_unit_that_systemd_accepts_and_nothing_outside_home(home, tmp_path):
    cfg = home / "station.toml"
    cfg.write_text("# a station config path with no spaces\n")
    before = _tree(tmp_path)
    r = service(home, "install", "--platform", "linux", "--config", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    unit = home / ".config" / "systemd" / "user" / "cns-agent.service"
    after = _tree(tmp_path)
    assert set(after) - set(before) == {str(unit.relative_to(tmp_path))}   # one new file, in the home
    text = unit.read_text()
    assert f'ExecStart="{AGENT}" "run" "--config" "{cfg}"' in text
    assert "WantedBy=default.target" in text and "Restart=on-failure" in text
    v = _verify(unit, tmp_path)
    assert v.returncode == 0, v.stderr
    # without a user manager in this session the unit is written and the user is told how to start it
    assert "systemctl --user enable --now cns-agent.service" in r.stdout
    st = service(home, "status", "--platform", "linux", "--json")
    assert st.returncode == 0 and '"installed": true' in st.stdout


def test_unit_keeps_spaces_percent_and_dollar_literal(home, tmp_path):
    """A config path like a user's folder names: systemd would expand % specifiers (%Z is not one: verify fails) and $HOME, and split on spaces."""
    cfg = home / "Dati 100%Z $HOME" / "station.toml"
    cfg.parent.mkdir()
    cfg.write_text("")
    r = service(home, "install", "--platform", "linux", "--config", str(cfg), "--no-start")
    assert r.returncode == 0, r.stderr
    unit = home / ".config" / "systemd" / "user" / "cns-agent.service"
    assert 'Dati 100%%Z $$HOME' in unit.read_text()
    v = _verify(unit, tmp_path)
    assert v.returncode == 0, v.stderr


def test_xdg_config_home_is_honoured(home):
    xdg = home / "cfg"
    r = service(home, "install", "--platform", "linux", "--no-start", XDG_CONFIG_HOME=str(xdg))
    assert r.returncode == 0, r.stderr
    assert (xdg / "systemd" / "user" / "cns-agent.service").exists()
    assert not (home / ".config").exists()


def test_a_unit_already_present_is_kept_and_the_user_told_how_to_replace_it(home):
    unit = home / ".config" / "systemd" / "user" / "cns-agent.service"
    unit.parent.mkdir(parents=True)
    theirs = "[Service]\nExecStart=/opt/central-it/cns-agent run\n"
    unit.write_text(theirs)
    r = service(home, "install", "--platform", "linux", "--no-start")
    assert r.returncode == 1
    err = one_line_error(r)
    assert str(unit) in err and "--replace" in err and "not written by cns-agent" in err
    assert unit.read_text() == theirs
    assert sorted(p.name for p in unit.parent.iterdir()) == ["cns-agent.service"]   # no temp file left
    # uninstall does not remove a file it did not write either
    u = service(home, "uninstall", "--platform", "linux", "--no-start")
    assert u.returncode == 1 and "not written by cns-agent" in one_line_error(u)
    assert unit.read_text() == theirs
    # the user checked it and asks for ours
    r = service(home, "install", "--platform", "linux", "--no-start", "--replace", "--json")
    assert r.returncode == 0 and '"file_state": "replaced"' in r.stdout
    assert "cns-agent service install" in unit.read_text()


def test_install_twice_is_a_no_op_and_uninstall_removes_ours(home):
    assert service(home, "install", "--platform", "linux", "--no-start").returncode == 0
    r = service(home, "install", "--platform", "linux", "--no-start", "--json")
    assert r.returncode == 0 and '"file_state": "unchanged"' in r.stdout
    r = service(home, "uninstall", "--platform", "linux", "--json")
    assert r.returncode == 0 and '"removed": true' in r.stdout
    assert not (home / ".config" / "systemd" / "user" / "cns-agent.service").exists()
    r = service(home, "uninstall", "--platform", "linux", "--json")
    assert r.returncode == 0 and '"removed": false' in r.stdout


def test_a_config_path_that_does_not_exist_is_refused_before_anything_is_written(home):
    r = service(home, "install", "--platform", "linux", "--config", str(home / "statoin.toml"))
    assert r.returncode == 1 and "statoin.toml" in one_line_error(r)
    assert not (home / ".config").exists()


def test_read_only_home_gives_one_line_and_keeps_the_previous_unit(home, tmp_path):
    """A real read-only file system (a read-only bind mount in a private mount namespace)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        require(["root and unshare (util-linux) for a read-only bind mount"])
    assert service(home, "install", "--platform", "linux", "--no-start").returncode == 0
    unit = home / ".config" / "systemd" / "user" / "cns-agent.service"
    previous = unit.read_bytes()
    other = home / "other.toml"
    other.write_text("")
    script = (f'mount --bind "{home}" "{home}" && mount -o remount,bind,ro "{home}" && '
              f'exec "{AGENT}" service install --platform linux --no-start --replace --config "{other}"')
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True,
                       text=True, env=_env(home), timeout=60)
    assert r.returncode == 1, (r.stdout, r.stderr)
    err = one_line_error(r)
    assert "read-only" in err and "nothing was changed" in err, err
    assert unit.read_bytes() == previous
    assert sorted(p.name for p in unit.parent.iterdir()) == ["cns-agent.service"]


def test_macos_launch_agent_is_a_per_user_plist(home, tmp_path):
    before = _tree(tmp_path)
    r = service(home, "install", "--platform", "macos")
    assert r.returncode == 0, r.stderr
    path = home / "Library" / "LaunchAgents" / "it.camcom.cns-agent.plist"
    assert set(_tree(tmp_path)) - set(before) == {str(path.relative_to(tmp_path))}
    doc = plistlib.loads(path.read_bytes())
    assert doc["Label"] == "it.camcom.cns-agent"
    assert doc["ProgramArguments"] == [AGENT, "run"]
    assert doc["RunAtLoad"] is True and doc["KeepAlive"] == {"SuccessfulExit": False}
    assert doc["LimitLoadToSessionType"] == "Aqua"
    assert doc["StandardErrorPath"].startswith(str(home))
    assert "not started" in r.stdout          # launchctl runs on macOS only


# Task Scheduler schema (taskschd.xsd): the children each of these elements may have. taskType is an
# xs:all (any order, Actions required); the Actions' Context must name a Principal's id (ContextKeyRef).
TASK_SHAPE = {
    "Task": ["RegistrationInfo", "Triggers", "Settings", "Data", "Principals", "Actions"],
    "RegistrationInfo": ["URI", "SecurityDescriptor", "Source", "Date", "Author", "Version", "Description",
                         "Documentation"],
    "Principal": ["UserId", "GroupId", "DisplayName", "LogonType", "RunLevel", "ProcessTokenSidType",
                  "RequiredPrivileges"],
    "Exec": ["Command", "Arguments", "WorkingDirectory"],
    "LogonTrigger": ["StartBoundary", "EndBoundary", "Enabled", "ExecutionTimeLimit", "Repetition", "Delay",
                     "UserId"],
}


def test_windows_logon_task_has_the_task_scheduler_shape(home):
    local = home / "AppData" / "Local"
    cfg = home / "Mario Rossi" / "station.toml"
    cfg.parent.mkdir()
    cfg.write_text("")
    r = service(home, "install", "--platform", "windows", "--config", str(cfg), LOCALAPPDATA=str(local),
                USERNAME="mrossi", USERDOMAIN="CCIAA")
    assert r.returncode == 0, r.stderr
    raw = (local / "cns-agent" / "cns-agent-task.xml").read_bytes()
    assert raw[:2] in (b"\xff\xfe", b"\xfe\xff")                         # UTF-16 with a BOM, as schtasks reads
    assert "encoding='utf-16'" in raw.decode("utf-16").splitlines()[0].lower().replace('"', "'")
    task = ET.fromstring(raw)
    assert task.tag == f"{TASK_NS}Task" and task.get("version") == "1.2"
    for el in task.iter():
        assert el.tag.startswith(TASK_NS), el.tag
        name = el.tag[len(TASK_NS):]
        if name in TASK_SHAPE:
            kids = [c.tag[len(TASK_NS):] for c in el]
            assert set(kids) <= set(TASK_SHAPE[name]) and len(set(kids)) == len(kids), (name, kids)
    ns = {"t": TASK_NS[1:-1]}
    assert task.find("t:Actions", ns) is not None
    assert task.find("t:Actions", ns).get("Context") == task.find("t:Principals/t:Principal", ns).get("id")
    (trigger,) = task.findall("t:Triggers/t:LogonTrigger", ns)
    assert trigger.findtext("t:UserId", namespaces=ns) == "CCIAA\\mrossi"       # this user's logon only
    pr = task.find("t:Principals/t:Principal", ns)
    assert pr.findtext("t:LogonType", namespaces=ns) == "InteractiveToken"     # no stored password
    assert pr.findtext("t:RunLevel", namespaces=ns) == "LeastPrivilege"        # no admin
    assert task.findtext("t:Settings/t:MultipleInstancesPolicy", namespaces=ns) == "IgnoreNew"
    ex = task.find("t:Actions/t:Exec", ns)
    assert ex.findtext("t:Command", namespaces=ns) == AGENT
    assert ex.findtext("t:Arguments", namespaces=ns) == f'run --config "{cfg}"'


def test_a_relative_config_path_is_written_absolute(home):
    """The operator types the path relative to where they stand; the service starts elsewhere."""
    (home / "station.toml").write_text("")
    r = subprocess.run([AGENT, "service", "install", "--platform", "linux", "--no-start", "--config", "station.toml"],
                       capture_output=True, text=True, env=_env(home), cwd=home, timeout=60)
    assert r.returncode == 0, r.stderr
    unit = (home / ".config" / "systemd" / "user" / "cns-agent.service").read_text()
    assert f'"--config" "{home / "station.toml"}"' in unit


MOCK_SYSTEMCTL = """#!/bin/sh
# MOCK of systemctl: a user manager cannot run on this host (see test_systemd_user.py). It refuses
# 'enable' the way a broken user manager does and records every call.
echo "$@" >> "$(dirname "$0")/calls"
case "$*" in *enable*) echo "Failed to enable unit: Access denied" >&2; exit 1 ;; esac
exit 0
"""


def test_a_manager_that_refuses_the_unit_leaves_the_previous_unit(home, tmp_path):
    rt = tmp_path / "rt"
    (rt / "systemd").mkdir(parents=True)
    (rt / "systemd" / "private").write_text("")        # what has_user_manager looks for
    mock = tmp_path / "mockbin"
    mock.mkdir()
    (mock / "systemctl").write_text(MOCK_SYSTEMCTL)
    (mock / "systemctl").chmod(0o755)
    path = f"{mock}:{os.environ['PATH']}"
    unit = home / ".config" / "systemd" / "user" / "cns-agent.service"
    # first install: refused by the manager, so no unit is left behind
    r = service(home, "install", "--platform", "linux", XDG_RUNTIME_DIR=str(rt), PATH=path)
    assert r.returncode == 1
    err = one_line_error(r)
    assert "Access denied" in err and "no file left" in err
    assert not unit.exists()
    assert "--user enable --now cns-agent.service" in (mock / "calls").read_text()
    # an installed unit, then a reinstall with other options that the manager refuses: the old one stays
    assert service(home, "install", "--platform", "linux", "--no-start").returncode == 0
    before = unit.read_bytes()
    (home / "other.toml").write_text("")
    r = service(home, "install", "--platform", "linux", "--replace", "--config", str(home / "other.toml"),
                XDG_RUNTIME_DIR=str(rt), PATH=path)
    assert r.returncode == 1 and "previous file was put back" in one_line_error(r)
    assert unit.read_bytes() == before
