"""``cns-agent service install`` started by a real ``systemd --user`` manager.

Needs a host booted with systemd (``/run/systemd/system``) and logind: the test user gets a
lingering user manager (``loginctl enable-linger``), installs the service as that user, and the
unit must be active with the agent's socket in ``/run/user/<uid>``; then uninstall stops it.
On a container without systemd as PID 1 (this project's build machines) ``systemd --user``
refuses to start ("the system has not been booted with systemd"), and even with a faked
``/run/systemd/system`` it cannot create its cgroup without logind's delegation: the test skips
and says so. The unit file itself is checked everywhere by test_service_files (systemd-analyze).
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def test_real_user_manager_starts_the_installed_agent(request):
    if not Path("/run/systemd/system").is_dir() or not shutil.which("loginctl"):
        pytest.skip("no systemd --user possible here: this host was not booted with systemd (no /run/systemd/system)")
    if os.geteuid() != 0:
        pytest.skip("root needed to create the test user and enable lingering")
    agent_binary = request.getfixturevalue("agent_binary")     # built only when the test can run
    base = Path(tempfile.mkdtemp(prefix="cns-sd-", dir="/tmp"))
    os.chmod(base, 0o711)
    name = f"cnssd{os.getpid() % 100000:05d}"
    home = base / name
    home.mkdir(mode=0o700)
    binary = base / "cns-agent"
    shutil.copy2(agent_binary, binary)
    os.chmod(binary, 0o755)
    subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/usr/sbin/nologin",
                    "--user-group", name], check=True, capture_output=True)
    pw = pwd.getpwnam(name)
    os.chown(home, pw.pw_uid, pw.pw_gid)
    rt = Path(f"/run/user/{pw.pw_uid}")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "XDG_RUNTIME_DIR": str(rt),
           "DBUS_SESSION_BUS_ADDRESS": f"unix:path={rt}/bus"}

    def as_user(*argv):
        return subprocess.run(list(argv), capture_output=True, text=True, env=env, user=pw.pw_uid, group=pw.pw_gid,
                              extra_groups=[], cwd=home, timeout=60)
    try:
        subprocess.run(["loginctl", "enable-linger", name], check=True, capture_output=True)
        deadline = time.monotonic() + 30
        while not (rt / "systemd" / "private").exists():
            assert time.monotonic() < deadline, "the user manager did not start after enable-linger"
            time.sleep(0.5)
        r = as_user(str(binary), "service", "install", "--json")
        assert r.returncode == 0, r.stderr
        assert '"service": "started"' in r.stdout
        deadline = time.monotonic() + 30
        while as_user("systemctl", "--user", "is-active", "cns-agent.service").stdout.strip() != "active" \
                or not (rt / "cns-agent" / "agent.sock").exists():
            assert time.monotonic() < deadline, as_user("systemctl", "--user", "status", "cns-agent.service").stdout
            time.sleep(0.5)
        st = as_user(str(binary), "service", "status", "--json")
        assert '"active": "active"' in st.stdout
        r = as_user(str(binary), "service", "uninstall", "--json")
        assert r.returncode == 0 and '"removed": true' in r.stdout
        assert as_user("systemctl", "--user", "is-active", "cns-agent.service").stdout.strip() != "active"
    finally:
        subprocess.run(["loginctl", "disable-linger", name], capture_output=True)
        subprocess.run(["userdel", name], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
